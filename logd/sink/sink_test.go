package sink

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/logd/masking"
	"chatmail.dev/sidecar/logging"
)

type flag bool

func (f flag) On() bool { return bool(f) }

// sendNB sends one datagram without blocking (MSG_DONTWAIT), as a sender
// that must never stall would; it returns the send error.
func sendNB(t *testing.T, fd int, path string, msg string) error {
	t.Helper()
	return syscall.Sendto(fd, []byte(msg), syscall.MSG_DONTWAIT, &syscall.SockaddrUnix{Name: path})
}

func setup(t *testing.T, qlen int, nolog NoLog) (string, *Queue, *Metrics, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "log.sock")
	c, err := Listen(path, 0o666, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(qlen, 16<<20, m, nolog)
	done := make(chan error, 1)
	go func() { done <- ReadLoop(c, masking.Postfix, q) }()
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("read loop: %v", err)
		}
	})
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return path, q, m, fd
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A burst larger than the queue, with nobody writing: the sender never
// blocks, the reader keeps reading, the overflow is dropped and counted.
func TestBurstDropsNeverBlocks(t *testing.T) {
	path, _, m, fd := setup(t, 10, flag(false))
	const n = 2000
	sent := 0
	start := time.Now()
	for i := range n {
		err := sendNB(t, fd, path, "Nov 29 14:10:12 mx postfix/smtpd[1]: connect from localhost[127.0.0.1] "+strings.Repeat("x", i%50))
		switch err {
		case nil:
			sent++
		case syscall.EAGAIN:
			time.Sleep(time.Millisecond) // the kernel queue is full for a moment; a real sender would drop or wait
		default:
			t.Fatalf("send: %v", err)
		}
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("sending %d datagrams took %v", n, d)
	}
	if sent < n/2 {
		t.Fatalf("only %d of %d sends succeeded: the reader does not drain", sent, n)
	}
	waitFor(t, "every datagram read", func() bool { return testutil.ToFloat64(m.Received) == float64(sent) })
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonQueueFull)); got != float64(sent-10) {
		t.Fatalf("dropped %v, want %d", got, sent-10)
	}
}

// pipeOut writes to a pipe nobody reads: the writer blocks for good.
type pipeOut struct{ w *io.PipeWriter }

func (p pipeOut) WriteLine(l string) error { _, err := io.WriteString(p.w, l+"\n"); return err }
func (p pipeOut) Flush() error             { return nil }

// A stalled writer does not stall the reader.
func TestStalledWriterDoesNotStallReader(t *testing.T) {
	path, q, m, fd := setup(t, 16, flag(false))
	r, w := io.Pipe()
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go WriteLoop(ctx, q, pipeOut{w})
	for i := range 500 {
		for {
			err := sendNB(t, fd, path, "Nov 29 14:10:12 mx postfix/master[1]: warning: number "+strings.Repeat("y", i%7))
			if err == nil {
				break
			}
			if err != syscall.EAGAIN {
				t.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitFor(t, "500 datagrams read", func() bool { return testutil.ToFloat64(m.Received) == 500 })
	if d := testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonQueueFull)); d < 500-16-1 {
		t.Fatalf("dropped %v with the writer stalled, want at least %d", d, 500-16-1)
	}
	w.CloseWithError(io.ErrClosedPipe)
}

type memOut struct {
	mu    sync.Mutex
	lines []string
}

func (o *memOut) WriteLine(l string) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.lines = append(o.lines, l)
	return nil
}
func (o *memOut) Flush() error { return nil }
func (o *memOut) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.lines...)
}

// Both formats end to end over real sockets, No-Log on.
func TestBothFormatsNoLog(t *testing.T) {
	dir := t.TempDir()
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(100, 16<<20, m, flag(true))
	for _, s := range []struct {
		name string
		src  masking.Source
	}{{"postfix", masking.Postfix}, {"dovecot", masking.Dovecot}} {
		c, err := Listen(filepath.Join(dir, s.name), 0o666, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go ReadLoop(c, s.src, q)
	}
	out := &memOut{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go WriteLoop(ctx, q, out)
	send := func(sock, msg string) {
		c, err := net.Dial("unixgram", filepath.Join(dir, sock))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	send("postfix", "Nov 29 14:10:13 mx postfix/smtpd[28082]: 16B1398C2B2: client=localhost[127.0.0.1]")
	send("postfix", "Nov 29 14:10:12 mx postfix/smtpd[28083]: warning: localhost[127.0.0.1]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=alice1234@chat.test")
	send("dovecot", "<22>Nov 29 14:10:11 dovecot: imap-login: Login: user=<bobbobbob@chat.test>, method=PLAIN, rip=127.0.0.1")
	send("dovecot", "<20>Nov 29 14:10:54 dovecot: master: Warning: Killed with signal 15 (by pid=32320 uid=0 code=kill)")
	waitFor(t, "4 lines handled", func() bool {
		return testutil.ToFloat64(m.Written)+testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonNoLog)) == 4
	})
	want := []string{
		"Nov 29 14:10:12 mx postfix/smtpd[28083]: warning: -[-]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=-",
		"Nov 29 14:10:54 dovecot: master: Warning: Killed with signal 15 (by pid=32320 uid=0 code=kill)",
	}
	got := out.get()
	if len(got) != 2 || !(got[0] == want[0] && got[1] == want[1] || got[0] == want[1] && got[1] == want[0]) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if testutil.ToFloat64(m.Masked) != 1 || testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonNoLog)) != 2 {
		t.Fatalf("masked %v, nolog drops %v", testutil.ToFloat64(m.Masked), testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonNoLog)))
	}
}

// Switching No-Log while lines wait in the queue: each line gets the
// stricter of the modes when it was read and when it is written, so that
// switching off never unmasks a line that came while No-Log was on.
func TestNoLogSwitchWhileQueued(t *testing.T) {
	const (
		user       = "Nov 29 14:10:13 mx postfix/smtpd[28082]: 16B1398C2B2: client=localhost[127.0.0.1]"
		warn       = "Nov 29 14:10:12 mx postfix/smtpd[28083]: warning: localhost[127.0.0.1]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=alice1234@chat.test"
		warnMasked = "Nov 29 14:10:12 mx postfix/smtpd[28083]: warning: -[-]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=-"
	)
	for _, c := range []struct {
		name        string
		read, write bool
		want        []string
	}{
		{"on when read, off when written", true, false, []string{warnMasked}},
		{"off when read, on when written", false, true, []string{warnMasked}},
		{"off throughout", false, false, []string{user, warn}},
		{"on throughout", true, true, []string{warnMasked}},
	} {
		t.Run(c.name, func(t *testing.T) {
			nolog := &logging.NoLog{}
			nolog.Set(c.read)
			path, q, m, fd := setup(t, 10, nolog)
			for _, l := range []string{user, warn} {
				if err := sendNB(t, fd, path, l); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "both lines read", func() bool { return testutil.ToFloat64(m.Received) == 2 })
			nolog.Set(c.write)
			out := &memOut{}
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // WriteLoop writes out what is queued, then returns
			WriteLoop(ctx, q, out)
			if got := out.get(); strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Fatalf("got %q\nwant %q", got, c.want)
			}
		})
	}
}

func TestFileRotateAndReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mail.log")
	f, err := OpenFile(p, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 12 {
		if err := f.WriteLine(strings.Repeat("a", 29)); err != nil { // 30 bytes a line
			t.Fatal(err)
		}
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{p, p + ".1", p + ".2"} {
		fi, err := os.Stat(name)
		if err != nil || fi.Size() > 100 || fi.Size() == 0 {
			t.Fatalf("%s: %v %v", name, fi, err)
		}
	}
	if _, err := os.Stat(p + ".3"); err == nil {
		t.Fatal("kept more than 2 old files")
	}
	if err := os.Rename(p, p+".moved"); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err != nil {
		t.Fatal(err)
	}
	if err := f.WriteLine("after"); err != nil {
		t.Fatal(err)
	}
	f.Flush()
	if b, _ := os.ReadFile(p); string(b) != "after\n" {
		t.Fatalf("after reopen: %q", b)
	}
}
