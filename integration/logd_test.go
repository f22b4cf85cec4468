package integration

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"chatmail.dev/integration/stack"
)

// Load of TestLogdUnderLoad: how many clients, and the least that must get
// through in each window. The numbers seen on a loaded 2-core machine are
// several times these; a stalled Postfix or Dovecot gets through none.
const (
	logdSMTPClients = 4
	logdIMAPClients = 2
	// The pauses of each client between transactions and logins: a steady
	// load that leaves the machine to the servers (and to other tests).
	logdSMTPPause = 100 * time.Millisecond
	logdIMAPPause = 200 * time.Millisecond
	// logdMinAcks: acknowledged messages in each window of a few seconds
	// (warm-up, logd dead, the second half of logd stopped, after restarts).
	logdMinAcks = 5
	// logdMinLogins: IMAP logins in the same windows.
	logdMinLogins = 5
	// logdStopFor is how long logd stays stopped: about as long as the
	// systemd watchdog lets a hung sink live.
	logdStopFor = 10 * time.Second
	// logdDeadFor is how long logd stays killed before it is started again.
	logdDeadFor = 5 * time.Second
)

// TestLogdUnderLoad: chatmail-logd is killed (SIGKILL, then started again),
// stopped (SIGSTOP for 10 s, then SIGCONT) and restarted (SIGTERM, drain,
// start) while SMTP clients deliver DKIM-signed PGP/MIME mail to the MX port
// and IMAP clients log in, without a pause. Mail keeps being acknowledged
// in every window, also while logd is dead or stopped (the kernel holds
// the lines of a stopped sink: deploy/sysctl.d/90-chatmail-logd.conf);
// after every step Postfix (smtpd, cleanup, qmgr, lmtp) and Dovecot
// (imap-login, lmtp) lines of mail and logins made after it appear in
// logd's output; every line logged while logd was stopped is written once
// it continues; at the end every acknowledged message is in its
// recipient's Maildir exactly once, and logd's metrics count what it read
// and wrote, nothing dropped.
func TestLogdUnderLoad(t *testing.T) {
	s := stack.Start(t)
	if out := s.Admin(t, "nolog", "status"); strings.TrimSpace(out) != "nolog off" {
		t.Fatalf("the stack says %q, want nolog off: the test reads Postfix's and Dovecot's lines", out)
	}
	for _, k := range []string{"LOGD_OUTPUT", "LOGD_METRICS", "DKIM_KEYS_DIR", "POSTFIX_CONFIG_DIR"} {
		if s.Env[k] == "" {
			t.Fatalf("stack.env has no %s", k)
		}
	}
	// Mail from elsewhere.test, signed with the stack's own key, which the
	// milter finds under that domain too (as TestMilterMX does).
	const from = "carol@elsewhere.test"
	copyFile(t, filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey."+s.Domain), filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey.elsewhere.test"))
	rcpts := newUsers(t, s, 6)
	ld := startMailLoad(t, s, from, rcpts)
	t.Cleanup(ld.stop) // before the stack goes down; a no-op once stopped
	out := &logdOutput{path: s.Env["LOGD_OUTPUT"]}

	// Warm-up: the load runs and logd writes its lines.
	offset := out.size(t)
	start := time.Now()
	time.Sleep(5 * time.Second)
	ld.want(t, "warm-up", start, time.Now(), logdMinAcks)
	wantLoggingResumed(t, s, ld, out, "warm-up", offset, start)

	// 1. SIGKILL: lines sent meanwhile are lost, mail goes on.
	fallback0 := fileSize(s.Env["POSTFIX_FALLBACK_LOG"])
	pid := logdPID(t, s)
	dead := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(logdDeadFor)
	ld.want(t, "logd dead", dead, time.Now(), logdMinAcks)
	offset = out.size(t)
	s.Run(t, "restart", "logd")
	restarted := time.Now()
	t.Logf("logd dead for %v (restart included); Postfix's fallback log grew by %d bytes",
		restarted.Sub(dead).Round(time.Millisecond), fileSize(s.Env["POSTFIX_FALLBACK_LOG"])-fallback0)
	if newPID := logdPID(t, s); newPID == pid {
		t.Fatalf("after the restart logd still has pid %d", pid)
	}
	wantLoggingResumed(t, s, ld, out, "after SIGKILL and start", offset, restarted)

	// 2. SIGSTOP: the sink hangs. The kernel queues the lines; Postfix and
	// Dovecot, which send them blocking, must not notice.
	time.Sleep(2 * time.Second) // Postfix's children of before the reload are gone
	pid = logdPID(t, s)
	offset = out.size(t)
	stopped := time.Now()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	isStopped := true
	t.Cleanup(func() { // if the test fails while logd is stopped
		if isStopped {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	})
	// Stopped indeed: its output does not grow while it is.
	time.Sleep(time.Second)
	if st := procState(t, pid); st != "T" {
		t.Fatalf("logd (%d) is in state %q after SIGSTOP, want T", pid, st)
	}
	frozen := out.size(t)
	time.Sleep(logdStopFor - time.Second)
	if n := out.size(t); n != frozen {
		t.Fatalf("logd's output grew from %d to %d bytes while logd was stopped", frozen, n)
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	isStopped = false
	continued := time.Now()
	half := stopped.Add(continued.Sub(stopped) / 2)
	ld.want(t, "logd stopped", stopped, continued, logdMinAcks)
	// Not only the first lines that fit a queue: the second half too.
	ld.want(t, "logd stopped, second half", half, continued, logdMinAcks)
	wantLoggingResumed(t, s, ld, out, "after SIGSTOP and SIGCONT", offset, continued)
	// Everything logged while it was stopped is written now: the
	// message-id line of cleanup of each message sent and acknowledged
	// meanwhile.
	heldIDs := ld.sentBetween(stopped, continued)
	eventually(t, 60*time.Second, func() error {
		text := out.since(t, offset)
		missing := 0
		for _, id := range heldIDs {
			if !strings.Contains(text, "message-id=<"+id+">") {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of the %d messages sent and acknowledged while logd was stopped have no cleanup line in its output", missing, len(heldIDs))
		}
		return nil
	})
	t.Logf("all %d messages sent and acknowledged while logd was stopped were logged after SIGCONT", len(heldIDs))
	m := logdMetrics(t, s)
	t.Logf("metrics of logd before the restart: %v", m)
	wantLogdMetrics(t, m)

	// 3. A plain restart: SIGTERM, drain, start, Postfix reloaded.
	offset = out.size(t)
	restarting := time.Now()
	s.Run(t, "restart", "logd")
	restarted = time.Now()
	t.Logf("restart took %v, %d messages acknowledged meanwhile", restarted.Sub(restarting).Round(time.Millisecond), len(ld.ackedBetween(restarting, restarted)))
	time.Sleep(3 * time.Second)
	ld.want(t, "restart", restarting, time.Now(), logdMinAcks)
	wantLoggingResumed(t, s, ld, out, "after restart", offset, restarted)

	// The end: every acknowledged message delivered, exactly once.
	ld.stop()
	acked, attempted, failed, logins := ld.totals()
	t.Logf("load: %d messages acknowledged of %d sent (%d failed), %d IMAP logins", acked, attempted, failed, logins)
	if failed > 0 {
		t.Errorf("%d SMTP transactions or IMAP logins failed during the load; first: %s", failed, ld.firstErr())
	}
	waitQueueEmpty(t, s, ld)
	wantDeliveredOnce(t, s, ld)
	m = logdMetrics(t, s)
	t.Logf("metrics of logd at the end: %v", m)
	wantLogdMetrics(t, m)
}

// mailLoad is the background load: SMTP clients delivering to the MX port,
// IMAP clients logging in, each recording what succeeded and when.
type mailLoad struct {
	s      *stack.Stack
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	acks   []mailAck         // in the order of acknowledgement
	sent   map[string]string // Message-ID → recipient, every message whose DATA was sent
	logins []time.Time
	errs   []string
}

type mailAck struct {
	id, rcpt      string
	started, done time.Time
}

func startMailLoad(t *testing.T, s *stack.Stack, from string, rcpts []string) *mailLoad {
	t.Helper()
	key := dkimKey(t, s)
	msg := fixture(t, "enc-v6.eml", from, "bob@chat.example")
	const fixtureID = "<fixture-multipar@localhost>"
	if !strings.Contains(msg, fixtureID) {
		t.Fatalf("enc-v6.eml has no Message-ID %s to replace", fixtureID)
	}
	run := strings.ToLower(rand.Text()[:8])
	ctx, cancel := context.WithCancel(context.Background())
	ld := &mailLoad{s: s, cancel: cancel, sent: map[string]string{}}
	for c := range logdSMTPClients {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				rcpt := rcpts[(c+n)%len(rcpts)]
				id := fmt.Sprintf("logd.%s.%d.%d@elsewhere.test", run, c, n)
				raw := strings.NewReplacer("bob@chat.example", rcpt, fixtureID, "<"+id+">").Replace(msg)
				signed, err := dkimSignKey(raw, "elsewhere.test", key)
				if err != nil {
					ld.fail(fmt.Sprintf("DKIM signing: %v", err))
					return
				}
				ld.send(from, rcpt, id, signed)
				time.Sleep(logdSMTPPause)
			}
		}()
	}
	for c := range logdIMAPClients {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				u := rcpts[(c+n)%len(rcpts)]
				if err := imapLoginWithin(s, u, goodPassword, 2*time.Minute); err != nil {
					ld.fail(fmt.Sprintf("IMAP login: %v", err))
					time.Sleep(100 * time.Millisecond)
					continue
				}
				ld.mu.Lock()
				ld.logins = append(ld.logins, time.Now())
				ld.mu.Unlock()
				time.Sleep(logdIMAPPause)
			}
		}()
	}
	return ld
}

// imapLoginWithin is imapLogin bounded in time: a stalled Dovecot shows as
// missing logins, not as a hung test.
func imapLoginWithin(s *stack.Stack, user, pass string, d time.Duration) error {
	conn, err := net.DialTimeout("tcp", s.Addr("IMAP_PORT"), d)
	if err != nil {
		return err
	}
	if err := conn.SetDeadline(time.Now().Add(d)); err != nil {
		conn.Close()
		return err
	}
	c := imapclient.New(conn, nil)
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// send delivers one message to the MX port and records whether the server
// acknowledged it. Generous timeouts: a stalled server shows as missing
// acknowledgements, not as a hung test.
func (ld *mailLoad) send(from, rcpt, id, msg string) {
	started := time.Now()
	conn, err := net.DialTimeout("tcp", ld.s.Addr("SMTP_PORT"), 30*time.Second)
	if err != nil {
		ld.fail(fmt.Sprintf("dial: %v", err))
		time.Sleep(100 * time.Millisecond)
		return
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout, c.SubmissionTimeout = 2*time.Minute, 2*time.Minute
	defer c.Close()
	if err := c.Hello("mx.elsewhere.test"); err != nil {
		ld.fail(fmt.Sprintf("EHLO: %v", err))
		return
	}
	if err := c.Mail(from, nil); err != nil {
		ld.fail(fmt.Sprintf("MAIL FROM: %v", err))
		return
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		ld.fail(fmt.Sprintf("RCPT TO: %v", err))
		return
	}
	w, err := c.Data()
	if err != nil {
		ld.fail(fmt.Sprintf("DATA: %v", err))
		return
	}
	ld.mu.Lock()
	ld.sent[id] = rcpt
	ld.mu.Unlock()
	if _, err := w.Write([]byte(msg)); err != nil {
		ld.fail(fmt.Sprintf("DATA body: %v", err))
		return
	}
	if err := w.Close(); err != nil {
		ld.fail(fmt.Sprintf("end of DATA: %v", err))
		return
	}
	ld.mu.Lock()
	ld.acks = append(ld.acks, mailAck{id: id, rcpt: rcpt, started: started, done: time.Now()})
	ld.mu.Unlock()
	_ = c.Quit() // acknowledged is acknowledged
}

func (ld *mailLoad) fail(msg string) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	ld.errs = append(ld.errs, time.Now().Format("15:04:05.000")+" "+msg)
}

// stop ends the load and waits for the clients' last transactions.
func (ld *mailLoad) stop() {
	ld.cancel()
	ld.wg.Wait()
}

func (ld *mailLoad) totals() (acked, attempted, failed, logins int) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return len(ld.acks), len(ld.sent), len(ld.errs), len(ld.logins)
}

func (ld *mailLoad) firstErr() string {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if len(ld.errs) == 0 {
		return ""
	}
	return ld.errs[0]
}

// ackedBetween returns the Message-IDs acknowledged between from and to.
func (ld *mailLoad) ackedBetween(from, to time.Time) []string {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	var ids []string
	for _, a := range ld.acks {
		if a.done.After(from) && a.done.Before(to) {
			ids = append(ids, a.id)
		}
	}
	return ids
}

// sentBetween returns the Message-IDs of the messages whose whole
// transaction, from connect to acknowledgement, came between from and to.
func (ld *mailLoad) sentBetween(from, to time.Time) []string {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	var ids []string
	for _, a := range ld.acks {
		if a.started.After(from) && a.done.Before(to) {
			ids = append(ids, a.id)
		}
	}
	return ids
}

func (ld *mailLoad) loginsBetween(from, to time.Time) int {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	n := 0
	for _, l := range ld.logins {
		if l.After(from) && l.Before(to) {
			n++
		}
	}
	return n
}

// want fails the test unless at least least messages were acknowledged, and
// as many IMAP logins succeeded, between from and to.
func (ld *mailLoad) want(t *testing.T, window string, from, to time.Time, least int) {
	t.Helper()
	acks, logins := len(ld.ackedBetween(from, to)), ld.loginsBetween(from, to)
	t.Logf("%s (%v): %d messages acknowledged, %d IMAP logins", window, to.Sub(from).Round(time.Millisecond), acks, logins)
	if acks < least {
		t.Errorf("%s: %d messages acknowledged in %v, want at least %d (last error: %s)", window, acks, to.Sub(from).Round(time.Millisecond), least, ld.lastErr())
	}
	if logins < logdMinLogins {
		t.Errorf("%s: %d IMAP logins in %v, want at least %d (last error: %s)", window, logins, to.Sub(from).Round(time.Millisecond), logdMinLogins, ld.lastErr())
	}
}

func (ld *mailLoad) lastErr() string {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	if len(ld.errs) == 0 {
		return "none"
	}
	return ld.errs[len(ld.errs)-1]
}

// acksAfter returns the messages whose whole transaction came after since,
// at most n, the first first.
func (ld *mailLoad) acksAfter(since time.Time, n int) []mailAck {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	var acks []mailAck
	for _, a := range ld.acks {
		if a.started.After(since) && len(acks) < n {
			acks = append(acks, a)
		}
	}
	return acks
}

// wantLoggingResumed checks that logd's output, from offset on, has the
// lines of mail and a login that began after since: Postfix's smtpd,
// cleanup, qmgr and lmtp lines of a message, Dovecot's lmtp line of its
// delivery and the imap-login line of a new user's first login.
//
// Not necessarily of the first message after since: scripts/stack restart
// returns once Postfix is told to reload, and Postfix's children of before
// the reload, still connected to the old socket, may take the next
// messages; their lines are lost (counted and reported).
func wantLoggingResumed(t *testing.T, s *stack.Stack, ld *mailLoad, out *logdOutput, step string, offset int64, since time.Time) {
	t.Helper()
	user := newAddr(s)
	if err := imapLogin(s, user, goodPassword); err != nil {
		t.Fatalf("%s: first login of a new user: %v", step, err)
	}
	// "Login" (Dovecot 2.3) or "Logged in" (2.4).
	login := regexp.MustCompile(`imap-login: (?:Login|Logged in): user=<` + regexp.QuoteMeta(user) + `>`)
	var missing []string
	var text string
	end := time.Now().Add(60 * time.Second)
	for {
		text = out.since(t, offset)
		acks := ld.acksAfter(since, 200)
		missing = []string{"a message acknowledged after " + since.Format("15:04:05.000")}
		for i, a := range acks {
			if missing = messageLines(text, a); len(missing) == 0 {
				if !login.MatchString(text) {
					missing = []string{"Dovecot imap-login: Login (or Logged in): user=<" + user + ">"}
					break
				}
				t.Logf("%s: logging resumed (%d bytes since the step; Postfix and Dovecot lines of %s and of a login found; %d messages before it were not logged in full)",
					step, len(text), a.id, i)
				return
			}
		}
		if time.Now().After(end) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: 60 s after the step logd's output has for no message sent after it all of its lines; of the last: no %s\nits last lines:\n%s",
		step, strings.Join(missing, "; "), lastLines(text, 30))
}

// messageLines returns which of Postfix's and Dovecot's lines of message a
// text lacks.
func messageLines(text string, a mailAck) (missing []string) {
	if !strings.Contains(text, "<"+a.id+">") { // quick: no line names it
		return []string{"line naming <" + a.id + ">"}
	}
	id, rcpt := regexp.QuoteMeta(a.id), regexp.QuoteMeta(a.rcpt)
	want := map[string]string{
		"Dovecot lmtp: msgid=<" + a.id + ">": `lmtp\(` + rcpt + `\).*msgid=<` + id + `>`,
	}
	if m := regexp.MustCompile(`postfix/\w+\[\d+\]: ([0-9A-Za-z]+): message-id=<` + id + `>`).FindStringSubmatch(text); m != nil {
		qid := regexp.QuoteMeta(m[1])
		want["Postfix smtpd: client="] = `postfix/smtpd\[\d+\]: ` + qid + `: client=`
		want["Postfix qmgr: from="] = `postfix/qmgr\[\d+\]: ` + qid + `: from=<`
		want["Postfix lmtp: to=<"+a.rcpt+"> status=sent"] = `postfix/lmtp\[\d+\]: ` + qid + `: to=<` + rcpt + `>.*status=sent`
	} else {
		missing = append(missing, "Postfix cleanup: message-id=<"+a.id+">")
	}
	for what, re := range want {
		if !regexp.MustCompile(re).MatchString(text) {
			missing = append(missing, what)
		}
	}
	return missing
}

// logdOutput reads logd's output file by offset.
type logdOutput struct{ path string }

func (o *logdOutput) size(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(o.path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// since returns what was written from offset on.
func (o *logdOutput) since(t *testing.T, offset int64) string {
	t.Helper()
	f, err := os.Open(o.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < offset {
		t.Fatalf("%s shrank from %d to %d bytes (rotated?)", o.path, offset, fi.Size())
	}
	b, err := io.ReadAll(io.NewSectionReader(f, offset, fi.Size()-offset))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logdPID returns the pid of the stack's chatmail-logd, checked to be one.
func logdPID(t *testing.T, s *stack.Stack) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, "run", "logd.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("run/logd.pid: %v", err)
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(comm)), "chatmail-logd") {
		t.Fatalf("pid %d of run/logd.pid is not chatmail-logd (%q, %v)", pid, comm, err)
	}
	return pid
}

// procState returns the state letter of a process (R, S, T, ...).
func procState(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// pid (comm) state ...: comm may hold spaces and parentheses.
	_, rest, ok := strings.Cut(string(b), ") ")
	if !ok || rest == "" {
		t.Fatalf("/proc/%d/stat: %q", pid, b)
	}
	return rest[:1]
}

// waitQueueEmpty waits until Postfix's queue holds nothing.
//
// Postfix's reload (scripts/stack restart logd does one) ends the queue
// manager while its delivery agents still deliver: the new one logs
// "skipped, still being delivered" and leaves the queue file, with every
// recipient done, in incoming/ until its next scan (a new message or its
// 300 s wakeup). Such files are flushed, once each is found delivered;
// a message left in the queue that is not in its recipient's Maildir
// fails the test.
func waitQueueEmpty(t *testing.T, s *stack.Stack, ld *mailLoad) {
	t.Helper()
	postqueue := s.Env["POSTQUEUE"] // the stack's own, where it names one
	if postqueue == "" {
		postqueue = "postqueue"
	}
	empty := func(d time.Duration) (string, bool) {
		var list string
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
			out, err := exec.Command(postqueue, "-c", s.Env["POSTFIX_CONFIG_DIR"], "-p").CombinedOutput()
			if err != nil {
				t.Fatalf("postqueue -p: %v: %s", err, out)
			}
			if list = string(out); strings.Contains(list, "Mail queue is empty") {
				return list, true
			}
		}
		return list, false
	}
	list, ok := empty(time.Minute)
	if ok {
		return
	}
	left := queuedMessageIDs(t, filepath.Join(s.Dir, "postfix", "queue"))
	delivered := deliveredIDs(t, s, ld)
	for qid, id := range left {
		if delivered[id] == 0 {
			t.Errorf("message %s (queue id %s) is still in Postfix's queue a minute after the load, not delivered\n%s", id, qid, lastLines(list, 20))
		}
	}
	t.Logf("a minute after the load Postfix's queue still holds %d files of delivered mail (left by a reload); flushing", len(left))
	if out, err := exec.Command(postqueue, "-c", s.Env["POSTFIX_CONFIG_DIR"], "-f").CombinedOutput(); err != nil {
		t.Fatalf("postqueue -f: %v: %s", err, out)
	}
	if list, ok = empty(2 * time.Minute); !ok {
		t.Fatalf("two minutes after postqueue -f Postfix's queue is not empty:\n%s", lastLines(list, 20))
	}
}

// queuedMessageID finds the Message-ID in a queue file, whose records are
// not lines.
var queuedMessageID = regexp.MustCompile(`(?i)Message-ID:[ \t]*<([^>\r\n]+)>`)

// queuedMessageIDs returns the Message-ID of each queue file of Postfix's
// incoming, active and deferred queues, by queue id.
func queuedMessageIDs(t *testing.T, queueDir string) map[string]string {
	t.Helper()
	ids := map[string]string{}
	for _, q := range []string{"incoming", "active", "deferred"} {
		err := filepath.WalkDir(filepath.Join(queueDir, q), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			id := "(none)"
			if m := queuedMessageID.FindSubmatch(b); m != nil {
				id = string(m[1])
			}
			ids[d.Name()] = id
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// deliveredIDs counts the copies of each message in the Maildirs of the
// load's recipients, by Message-ID and by Message-ID + " " + recipient.
func deliveredIDs(t *testing.T, s *stack.Stack, ld *mailLoad) map[string]int {
	t.Helper()
	ld.mu.Lock()
	rcpts := map[string]bool{}
	for _, r := range ld.sent {
		rcpts[r] = true
	}
	ld.mu.Unlock()
	found := map[string]int{}
	for r := range rcpts {
		ids, _ := messageIDs(t, s, r)
		for _, id := range ids {
			found[id]++
			found[id+" "+r]++
		}
	}
	return found
}

// wantDeliveredOnce checks that every acknowledged message is in its
// recipient's Maildir exactly once, and no other message more than once.
func wantDeliveredOnce(t *testing.T, s *stack.Stack, ld *mailLoad) {
	t.Helper()
	found := deliveredIDs(t, s, ld)
	ld.mu.Lock()
	acks, sent := append([]mailAck(nil), ld.acks...), make(map[string]string, len(ld.sent))
	for k, v := range ld.sent {
		sent[k] = v
	}
	ld.mu.Unlock()
	lost, dup := 0, 0
	acked := map[string]bool{}
	for _, a := range acks {
		acked[a.id] = true
		switch n := found[a.id]; {
		case n == 0 || found[a.id+" "+a.rcpt] == 0:
			if lost++; lost <= 5 {
				t.Errorf("message %s, acknowledged at %s, is not in %s's Maildir", a.id, a.done.Format("15:04:05.000"), a.rcpt)
			}
		case n > 1:
			if dup++; dup <= 5 {
				t.Errorf("message %s is delivered %d times", a.id, n)
			}
		}
	}
	copies := 0
	for id, n := range found {
		if strings.Contains(id, " ") {
			continue
		}
		copies += n
		if _, ok := sent[id]; !ok {
			t.Errorf("a message %s that the load did not send is in a Maildir", id)
		} else if n > 1 && !acked[id] {
			t.Errorf("message %s (not acknowledged) is delivered %d times", id, n)
		}
	}
	if lost+dup > 0 {
		t.Errorf("of %d acknowledged messages %d are lost and %d delivered more than once", len(acks), lost, dup)
		return
	}
	t.Logf("%d acknowledged messages each delivered exactly once (%d messages in the Maildirs, %d sent)", len(acks), copies, len(sent))
}

// logdMetrics returns logd's series, by name with labels.
func logdMetrics(t *testing.T, s *stack.Stack) map[string]float64 {
	t.Helper()
	return scrapeMetrics(t, s.Env["LOGD_METRICS"], "chatmail_logd_")
}

// wantLogdMetrics: logd read and wrote lines and dropped none.
func wantLogdMetrics(t *testing.T, m map[string]float64) {
	t.Helper()
	rcv, wr := m["chatmail_logd_lines_received_total"], m["chatmail_logd_lines_written_total"]
	if rcv < 100 || wr < 100 {
		t.Errorf("logd's metrics: %v lines received, %v written; want at least 100 of each under load", rcv, wr)
	}
	if wr > rcv {
		t.Errorf("logd's metrics: %v lines written, more than the %v received", wr, rcv)
	}
	for _, r := range []string{"queue_full", "write_error", "nolog"} {
		series := `chatmail_logd_lines_dropped_total{reason="` + r + `"}`
		v, ok := m[series]
		if !ok {
			t.Errorf("logd's metrics have no %s", series)
		} else if v != 0 {
			t.Errorf("logd's metrics: %s = %v, want 0", series, v)
		}
	}
}

// dkimKey reads the stack's DKIM key, which signs for elsewhere.test too.
func dkimKey(t *testing.T, s *stack.Stack) crypto.Signer {
	t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(s.Dir, "etc", "dkim.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("etc/dkim.key is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return key.(crypto.Signer)
}

// dkimSignKey is dkimSign for goroutines: it returns the error.
func dkimSignKey(msg, domain string, key crypto.Signer) (string, error) {
	crlf := strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(crlf), &dkim.SignOptions{Domain: domain, Selector: "chatmail", Signer: key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
	return out.String(), err
}
