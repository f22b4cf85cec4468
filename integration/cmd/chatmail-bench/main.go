// Command chatmail-bench measures a running stack: dict lookups through
// doveauth's socket with a new connection per lookup, as Dovecot makes them,
// IMAP logins through Dovecot, and messages through Postfix (with -maildir,
// end to end: until they are delivered). scripts/bench runs it against
// doveauth and chatmail-milter and against references started in the same
// run, and prints the ratios.
//
// dict, imap and smtp print one line: operations/s, p50 and p99 latency
// (ms), and the CPU time the whole machine spent per operation (ms).
// smtp-load is a steady load for a fixed time, counted per second, with a
// process stopped for part of it (smtpLoad says what it prints).
// turn-alloc makes TURN allocations (turnAlloc says what it prints).
// fed-load sends mail from users of one stack to accounts of another and
// times each message from its acceptance to its file in the Maildir
// (fedLoad says what it prints); fed-check checks a run's Maildirs again.
//
//	chatmail-bench dict -socket PATH -user ADDR [-kind userdb|passdb -pass PW] [-n N] [-c CONC]
//	chatmail-bench imap -addr HOST:PORT -user ADDR -pass PW [-n N] [-c CONC]
//	chatmail-bench noop-milter -socket PATH    (a reference milter that accepts everything)
//	chatmail-bench smtp -addr HOST:PORT -from ADDR -user ADDR -msg FILE [-dkim-key PEM -dkim-selector S] [-per-session K] [-maildir DIR] [-n N] [-c CONC]
//	chatmail-bench turn-alloc -addr HOST:PORT -user USERNAME -pass PW [-n N] [-c CONC] [-trace]    (TURN allocations over UDP, each released)
//	chatmail-bench turn-cred -secret-file PATH -expiry UNIXTIME    (prints "username password")
//	chatmail-bench smtp-load -addr HOST:PORT -from ADDR -user ADDR -msg FILE [-dkim-key PEM -dkim-selector S] [-maildir DIR]
//	        [-c CONC] [-rate SESSIONS/S] [-duration D] [-stop-pid PID -stop-at D -stop-for D] [-per-second FILE]
//	chatmail-bench fed-load -addr HOST:PORT [-ca PEM -server-name NAME] -from ADDR[,ADDR...] -pass PW -to ADDR[,ADDR...] -mailboxes DIR -msg FILE
//	        [-c CONC] [-inflight K] [-duration D] [-warmup D] [-timeout D] [-netns LABEL=NETNS,...] [-markers FILE] [-top N]
//	chatmail-bench fed-check -markers FILE
package main

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: chatmail-bench dict|imap|smtp|smtp-load|noop-milter|turn-alloc|turn-cred|fed-load|fed-check [flags]")
		os.Exit(2)
	}
	if f, ok := map[string]func([]string) error{"smtp-load": smtpLoad, "turn-cred": turnCred, "turn-alloc": turnAlloc, "fed-load": fedLoad, "fed-check": fedCheck}[os.Args[1]]; ok {
		if err := f(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	n := fs.Int("n", 20000, "operations")
	conc := fs.Int("c", 16, "concurrent clients")
	socket := fs.String("socket", "", "dict socket")
	addr := fs.String("addr", "", "IMAP host:port")
	user := fs.String("user", "", "account")
	pass := fs.String("pass", "", "password")
	from := fs.String("from", "", "envelope sender (smtp)")
	msgFile := fs.String("msg", "", "message file (smtp)")
	dkimKey := fs.String("dkim-key", "", "sign the message once with this PEM key (smtp)")
	dkimSelector := fs.String("dkim-selector", "", "DKIM selector (smtp)")
	perSession := fs.Int("per-session", 1, "messages per SMTP session (smtp)")
	kind := fs.String("kind", "userdb", "dict lookup: userdb or passdb (passdb asks PostgreSQL every time)")
	maildir := fs.String("maildir", "", "smtp: end to end, until the messages are in this Maildir")
	fs.Parse(os.Args[2:])

	var op func() error
	var settle func() error // after the last operation, inside the time
	switch os.Args[1] {
	case "noop-milter":
		if err := serveNoopMilter(*socket); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	case "dict":
		key := "shared/userdb/" + *user
		if *kind == "passdb" {
			key = "shared/passdb/" + *pass + `"` + *user
		}
		req := "H3\t2\t0\t\tauth\nL" + key + "\t" + *user + "\n"
		op = func() error { return dictLookup(*socket, req) }
	case "imap":
		req := fmt.Sprintf("a LOGIN %s %s\r\nb LOGOUT\r\n", *user, *pass)
		op = func() error { return imapLogin(*addr, req) }
	case "smtp":
		msg, err := loadMessage(*msgFile, *from, *dkimKey, *dkimSelector)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		op = func() error { return smtpSend(*addr, *from, *user, msg, *perSession) }
		if *maildir != "" {
			want := countMail(*maildir) + *n**perSession
			settle = func() error { return awaitMail(*maildir, want, 5*time.Minute) }
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown benchmark", os.Args[1])
		os.Exit(2)
	}
	cpu0 := busyCPU()
	rate, p50, p99, err := run(*n, *conc, op, settle)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cpu := busyCPU() - cpu0
	// One machine-readable line: ops/s, p50 and p99 (ms), and the CPU time
	// the whole machine spent per operation (ms), whoever spent it.
	fmt.Printf("%.0f %.3f %.3f %.3f\n", rate, p50.Seconds()*1000, p99.Seconds()*1000, cpu.Seconds()*1000/float64(*n))
}

// busyCPU is the CPU time all processors have spent busy since boot.
func busyCPU() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var ticks int64
	// user nice system idle iowait irq softirq: all but idle and iowait.
	// (steal is another machine's; guest time is already in user.)
	for i, v := range f[1:min(len(f), 8)] {
		if i == 3 || i == 4 {
			continue
		}
		n, _ := strconv.ParseInt(v, 10, 64)
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

// countMail counts the messages in a Maildir.
func countMail(dir string) int {
	n := 0
	for _, sub := range []string{"new", "cur"} {
		es, _ := os.ReadDir(filepath.Join(dir, sub))
		n += len(es)
	}
	return n
}

// awaitMail waits until the Maildir holds want messages.
func awaitMail(dir string, want int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for countMail(dir) < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d messages after %v, want %d", dir, countMail(dir), timeout, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// run runs op n times over conc clients, then settle (if not nil), and
// returns the rate over the whole time and the latencies of op.
func run(n, conc int, op, settle func() error) (rate float64, p50, p99 time.Duration, err error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				t := time.Now()
				if err := op(); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				lat[i] = time.Since(t)
			}
		}()
	}
	wg.Wait()
	if e, ok := firstErr.Load().(error); ok {
		return 0, 0, 0, e
	}
	if settle != nil {
		if err := settle(); err != nil {
			return 0, 0, 0, err
		}
	}
	elapsed := time.Since(start)
	slices.Sort(lat)
	return float64(n) / elapsed.Seconds(), lat[n/2], lat[n*99/100], nil
}

func dictLookup(socket, req string) error {
	c, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line[0] != 'O' {
		return fmt.Errorf("lookup answered %q", line)
	}
	return nil
}

func imapLogin(addr, req string) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return err
	}
	if _, err := c.Write([]byte(req)); err != nil {
		return err
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "a ") {
			if !strings.HasPrefix(line, "a OK") {
				return fmt.Errorf("login answered %q", line)
			}
			return nil
		}
	}
}

// loadMessage reads a message, normalizes it to CRLF and, given a key, signs
// it once the way the sending server would.
func loadMessage(path, from, keyFile, selector string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	msg := []byte(strings.ReplaceAll(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n", "\r\n"))
	if keyFile == "" {
		return msg, nil
	}
	pemBytes, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM key", keyFile)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	_, domain, _ := strings.Cut(from, "@")
	var signed bytes.Buffer
	err = dkim.Sign(&signed, bytes.NewReader(msg), &dkim.SignOptions{Domain: domain, Selector: selector, Signer: key.(crypto.Signer)})
	return signed.Bytes(), err
}

// smtpSend sends msg n times over one SMTP session.
func smtpSend(addr, from, to string, msg []byte, n int) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("bench.test"); err != nil {
		return err
	}
	for range n {
		if err := c.SendMail(from, []string{to}, bytes.NewReader(msg)); err != nil {
			return err
		}
	}
	return c.Quit()
}

// noopMilter accepts everything. It asks for the events chatmail-milter
// asks for and answers only where chatmail-milter answers (milter/server's
// protocol), so that it costs Postfix what the milter protocol itself
// costs: make bench compares chatmail-milter against it.
type noopMilter struct{ milter.NoOpMilter }

const noopProtocol = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoUnknown | milter.OptNoData |
	milter.OptNoMailReply | milter.OptNoHeaderReply | milter.OptNoEOHReply | milter.OptNoBodyReply |
	milter.OptHeaderLeadingSpace

// No answers to these (SMFIP_NR_*): go-milter sends none for a nil response.
func (noopMilter) MailFrom(string, *milter.Modifier) (milter.Response, error) { return nil, nil }

func (noopMilter) Header(string, string, *milter.Modifier) (milter.Response, error) {
	return nil, nil
}

func (noopMilter) Headers(textproto.MIMEHeader, *milter.Modifier) (milter.Response, error) {
	return nil, nil
}

func (noopMilter) BodyChunk([]byte, *milter.Modifier) (milter.Response, error) { return nil, nil }

func serveNoopMilter(socket string) error {
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	if err := os.Chmod(socket, 0o666); err != nil {
		return err
	}
	s := milter.Server{NewMilter: func() milter.Milter { return noopMilter{} }, Protocol: noopProtocol}
	return s.Serve(ln)
}
