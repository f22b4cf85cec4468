package sender

import (
	"context"
	"net"
	"net/textproto"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"chatmail.dev/sidecar/logging/logtest"
)

// recorder is a Deliverer that answers from a table and records calls.
type recorder struct {
	mu     sync.Mutex
	calls  map[string]Envelope
	bodies map[string]string
	answer func(domain, rcpt string) Reply
	delay  time.Duration
}

func (r *recorder) Deliver(ctx context.Context, domain string, env Envelope, body *Body) []Reply {
	time.Sleep(r.delay)
	b := make([]byte, body.Size())
	if _, err := body.Reader().ReadAt(b, 0); err != nil {
		panic(err)
	}
	r.mu.Lock()
	r.calls[domain] = env
	r.bodies[domain] = string(b)
	r.mu.Unlock()
	var out []Reply
	for _, rc := range env.To {
		out = append(out, r.answer(domain, rc))
	}
	return out
}

func startLMTP(t *testing.T, srv *Server) *textproto.Conn {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "lmtp"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		<-done
	})
	c, err := textproto.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	expect(t, c, 220)
	return c
}

func expect(t *testing.T, c *textproto.Conn, code int) string {
	t.Helper()
	got, msg, err := c.ReadResponse(code)
	if err != nil {
		t.Fatalf("want %d, got %d %q: %v", code, got, msg, err)
	}
	return msg
}

func cmd(t *testing.T, c *textproto.Conn, code int, format string, args ...any) string {
	t.Helper()
	if err := c.PrintfLine(format, args...); err != nil {
		t.Fatal(err)
	}
	return expect(t, c, code)
}

// One reply per recipient after DATA, in RCPT order, from the delivery of
// its domain; the domains are delivered separately, with the body as
// Postfix sent it (dot-stuffing kept, bare LF made CRLF).
func TestLMTPPerRecipient(t *testing.T) {
	rec := &recorder{calls: map[string]Envelope{}, bodies: map[string]string{}, answer: func(d, rc string) Reply {
		switch strings.ToLower(rc) {
		case "bad@b.test":
			return newReply(550, "5.1.1", "no such user", ViaSMTP)
		case "later@a.test":
			return newReply(451, "4.4.1", "later", ViaNone)
		}
		return newReply(250, "2.0.0", "OK", ViaHTTPS)
	}}
	c := startLMTP(t, &Server{Deliverer: rec, Hostname: "mx.us.test"})
	msg := cmd(t, c, 250, "LHLO postfix")
	if !strings.Contains(msg, "PIPELINING") || !strings.Contains(msg, "SIZE") {
		t.Errorf("LHLO: %q", msg)
	}
	cmd(t, c, 250, "MAIL FROM:<alice@us.test> BODY=8BITMIME SIZE=100")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 250, "RCPT TO:<bad@b.test>")
	cmd(t, c, 501, "RCPT TO:<no-domain>")
	cmd(t, c, 250, "RCPT TO:<later@A.test>")
	cmd(t, c, 250, "RCPT TO:<c@b.test>")
	cmd(t, c, 354, "DATA")
	c.W.WriteString("Subject: x\r\n\r\n..stuffed\nbare LF\r\n.\r\n")
	c.W.Flush()
	want := []string{"250 2.0.0 OK", "550 5.1.1 no such user", "451 4.4.1 later", "250 2.0.0 OK"}
	for i, w := range want {
		line, err := c.ReadLine()
		if err != nil || line != w {
			t.Fatalf("reply %d: %q %v, want %q", i, line, err, w)
		}
	}
	if a := rec.calls["a.test"]; !slices.Equal(a.To, []string{"b@a.test", "later@A.test"}) || a.From != "alice@us.test" || !a.EightBit {
		t.Errorf("a.test got %+v", a)
	}
	if b := rec.calls["b.test"]; !slices.Equal(b.To, []string{"bad@b.test", "c@b.test"}) {
		t.Errorf("b.test got %+v", b)
	}
	if got := rec.bodies["b.test"]; got != "Subject: x\r\n\r\n..stuffed\r\nbare LF\r\n" {
		t.Errorf("body %q", got)
	}
	// The transaction is over: RCPT needs a new MAIL.
	cmd(t, c, 503, "RCPT TO:<b@a.test>")
	cmd(t, c, 250, "NOOP")
	cmd(t, c, 221, "QUIT")
}

// A body over the size cap is read to its end and refused per recipient,
// and the session goes on; SIZE above it is refused at MAIL.
func TestLMTPSizeLimit(t *testing.T) {
	rec := &recorder{calls: map[string]Envelope{}, bodies: map[string]string{}, answer: func(string, string) Reply { return replyDelivered }}
	c := startLMTP(t, &Server{Deliverer: rec, MaxMessageSize: 100, SpoolThreshold: 10, SpoolDir: t.TempDir()})
	cmd(t, c, 250, "LHLO postfix")
	cmd(t, c, 552, "MAIL FROM:<> SIZE=101")
	cmd(t, c, 250, "MAIL FROM:<>")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 250, "RCPT TO:<c@a.test>")
	cmd(t, c, 354, "DATA")
	c.W.WriteString(strings.Repeat("0123456789", 20) + "\r\n.\r\n")
	c.W.Flush()
	expect(t, c, 552)
	expect(t, c, 552)
	if len(rec.calls) != 0 {
		t.Fatal("an oversized message was delivered")
	}
	// Within the cap, above the spool threshold: goes through a file.
	cmd(t, c, 250, "MAIL FROM:<>")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 354, "DATA")
	c.W.WriteString(strings.Repeat("x", 50) + "\r\n.\r\n")
	c.W.Flush()
	expect(t, c, 250)
	if rec.bodies["a.test"] != strings.Repeat("x", 50)+"\r\n" {
		t.Errorf("spooled body %q", rec.bodies["a.test"])
	}
}

func TestLMTPSequence(t *testing.T) {
	rec := &recorder{calls: map[string]Envelope{}, bodies: map[string]string{}, answer: func(string, string) Reply { return replyDelivered }}
	c := startLMTP(t, &Server{Deliverer: rec, MaxRecipients: 1})
	cmd(t, c, 503, "MAIL FROM:<a@us.test>")
	cmd(t, c, 500, "EHLO x")
	cmd(t, c, 250, "LHLO postfix")
	cmd(t, c, 503, "DATA")
	cmd(t, c, 250, "MAIL FROM:<a@us.test>")
	cmd(t, c, 503, "MAIL FROM:<a@us.test>")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 452, "RCPT TO:<c@a.test>")
	cmd(t, c, 250, "RSET")
	cmd(t, c, 503, "RCPT TO:<b@a.test>")
	// The server answers and hangs up as soon as the line is too long: the
	// rest of the write may find the connection closed.
	_ = c.PrintfLine("%s", strings.Repeat("x", 5000))
	expect(t, c, 500)
}

// Shutdown lets a delivery in progress finish and answer.
func TestLMTPShutdownDrains(t *testing.T) {
	rec := &recorder{calls: map[string]Envelope{}, bodies: map[string]string{}, delay: 300 * time.Millisecond,
		answer: func(string, string) Reply { return replyDelivered }}
	srv := &Server{Deliverer: rec}
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "lmtp"))
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	c, err := textproto.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expect(t, c, 220)
	cmd(t, c, 250, "LHLO postfix")
	cmd(t, c, 250, "MAIL FROM:<>")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 354, "DATA")
	c.W.WriteString("x\r\n.\r\n")
	c.W.Flush()
	time.Sleep(50 * time.Millisecond) // the delivery is under way
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	expect(t, c, 250)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
}

// End to end: LMTP in, the real sender out to a fake relay (a.test, POST
// accepted) and a fake SMTP-only server (implicit.test, one recipient
// refused); an identity is logged only as a masking attribute.
func TestLMTPEndToEnd(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	mta := e.smtp("implicit.test")
	mta.reject["gone@implicit.test"] = "550 5.1.1 <gone@implicit.test>: no such user"
	log, _, buf := logtest.New(false)
	s := e.sender(nil)
	s.log = log
	c := startLMTP(t, &Server{Deliverer: s, Log: log})
	cmd(t, c, 250, "LHLO postfix")
	cmd(t, c, 250, "MAIL FROM:<alice@us.test>")
	cmd(t, c, 250, "RCPT TO:<gone@implicit.test>")
	cmd(t, c, 250, "RCPT TO:<b@a.test>")
	cmd(t, c, 250, "RCPT TO:<d@implicit.test>")
	cmd(t, c, 354, "DATA")
	c.W.WriteString(testBody + ".\r\n")
	c.W.Flush()
	expect(t, c, 550)
	expect(t, c, 250)
	expect(t, c, 250)
	if len(rcv.posts()) != 1 || len(mta.transactions()) != 1 {
		t.Fatalf("%d posts, %d SMTP transactions", len(rcv.posts()), len(mta.transactions()))
	}
	out := buf.String()
	// What No-Log would mask wholesale: the addr attributes.
	masked := regexp.MustCompile(`addr=\S+`).ReplaceAllString(out, "addr=-")
	if leaks := logtest.Leaks(masked, "alice@us.test", "gone@implicit.test", "b@a.test", "mx1.a.test", "implicit.test", "127.0.0.1"); len(leaks) > 0 {
		t.Errorf("log leaks %v:\n%s", leaks, out)
	}
	if !strings.Contains(out, "delivery failed") {
		t.Errorf("the failure was not logged:\n%s", out)
	}
}

// stallDeliverer delivers every domain but stall.test at once; that one
// until its context ends.
type stallDeliverer struct{}

func (stallDeliverer) Deliver(ctx context.Context, domain string, env Envelope, _ *Body) []Reply {
	r := replyDelivered
	if domain == "stall.test" {
		<-ctx.Done()
		r = replyUnreachable
	}
	return all(len(env.To), r)
}

// A message's deliveries end at TransactionTimeout: what is done is
// acknowledged, the rest (running or not started) fails temporarily, and
// Postfix gets every reply before its own lmtp_data_done_timeout, so it
// never sends the delivered recipients again.
func TestLMTPTransactionTimeout(t *testing.T) {
	c := startLMTP(t, &Server{Deliverer: stallDeliverer{}, MaxParallelDomains: 1, TransactionTimeout: 300 * time.Millisecond})
	cmd(t, c, 250, "LHLO postfix")
	cmd(t, c, 250, "MAIL FROM:<alice@us.test>")
	for _, rc := range []string{"a@fast.test", "b@stall.test", "c@later.test"} {
		cmd(t, c, 250, "RCPT TO:<%s>", rc)
	}
	cmd(t, c, 354, "DATA")
	start := time.Now()
	c.W.WriteString(testBody + ".\r\n")
	c.W.Flush()
	expect(t, c, 250)
	if msg := expect(t, c, 451); !strings.Contains(msg, "4.4.1") {
		t.Errorf("the stalled domain: %q", msg)
	}
	if msg := expect(t, c, 451); !strings.Contains(msg, "4.4.7") {
		t.Errorf("the domain never started: %q", msg)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("answered after %v", d)
	}
}
