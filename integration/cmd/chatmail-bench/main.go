// Command chatmail-bench measures a running stack: dict lookups through
// doveauth's socket with a new connection per lookup, as Dovecot makes them,
// and IMAP logins through Dovecot. scripts/bench runs it against doveauth and
// against references started in the same run, and prints the ratios.
//
//	chatmail-bench dict -socket PATH -user ADDR [-kind userdb|passdb -pass PW] [-n N] [-c CONC]
//	chatmail-bench imap -addr HOST:PORT -user ADDR -pass PW [-n N] [-c CONC]
//	chatmail-bench noop-milter -socket PATH    (a reference milter that accepts everything)
//	chatmail-bench smtp -addr HOST:PORT -from ADDR -user ADDR -msg FILE [-dkim-key PEM -dkim-selector S] [-per-session K] [-n N] [-c CONC]
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
	"os"
	"slices"
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
		fmt.Fprintln(os.Stderr, "usage: chatmail-bench dict|imap [flags]")
		os.Exit(2)
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
	fs.Parse(os.Args[2:])

	var op func() error
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
	default:
		fmt.Fprintln(os.Stderr, "unknown benchmark", os.Args[1])
		os.Exit(2)
	}
	rate, p50, p99, err := run(*n, *conc, op)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// One machine-readable line: ops/s p50 p99 (milliseconds).
	fmt.Printf("%.0f %.3f %.3f\n", rate, p50.Seconds()*1000, p99.Seconds()*1000)
}

func run(n, conc int, op func() error) (rate float64, p50, p99 time.Duration, err error) {
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
	elapsed := time.Since(start)
	if e, ok := firstErr.Load().(error); ok {
		return 0, 0, 0, e
	}
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

type noopMilter struct{ milter.NoOpMilter }

// serveNoopMilter serves a milter that accepts everything, with the same
// protocol options as chatmail-milter: the cost of the milter protocol
// itself, which make bench compares chatmail-milter against.
func serveNoopMilter(socket string) error {
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	if err := os.Chmod(socket, 0o666); err != nil {
		return err
	}
	s := milter.Server{NewMilter: func() milter.Milter { return &noopMilter{} }, Protocol: milter.OptNoConnect | milter.OptNoHelo}
	return s.Serve(ln)
}
