package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/mailpolicy"
)

type harness struct {
	sock   string
	reg    *prometheus.Registry
	m      *Metrics
	cancel func() // shut the server down, as SIGTERM does
	done   chan error
}

func start(t testing.TB, edit func(*Config)) *harness {
	t.Helper()
	return startLogged(t, slog.New(slog.DiscardHandler), edit, nil)
}

// startLogged starts a server logging to log; setup, if set, adjusts the
// engine before the server starts.
func startLogged(t testing.TB, log *slog.Logger, edit func(*Config), setup func(*mailpolicy.Engine)) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "m") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Defaults()
	cfg.VerifyDKIM = false
	cfg.Listen = "unix:" + filepath.Join(dir, "s")
	if edit != nil {
		edit(&cfg)
	}
	common := config.Defaults()
	common.Mail.Domains = []string{"chat.example"}
	engine, err := mailpolicy.NewEngine(&common, &cfg.Config, log)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(engine)
	}
	// A stale socket from a crash is replaced.
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "s")); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	h := &harness{sock: filepath.Join(dir, "s"), reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	h.m = NewMetrics(h.reg)
	s := New(engine, log, h.m)
	h.cancel = serve(t, s, ln, h.done)
	t.Cleanup(func() {
		h.cancel()
		<-h.done
	})
	return h
}

// serve runs s on ln. The function it returns starts a shutdown (once),
// as SIGTERM does; done gets the result when the drain has ended.
func serve(t testing.TB, s *Server, ln net.Listener, done chan error) (shutdown func()) {
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			go func() {
				err := s.Shutdown(context.Background())
				if serr := <-served; !errors.Is(serr, ErrServerClosed) {
					t.Errorf("Serve: %v", serr)
				}
				done <- err
			}()
		})
	}
}

func (h *harness) session(t testing.TB) *milter.ClientSession {
	t.Helper()
	c := milter.NewClientWithOptions("unix", h.sock, milter.ClientOptions{
		ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ActionMask: milter.OptAddHeader | milter.OptChangeHeader,
	})
	s, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// begin sends MAIL (with the SASL login, if any) and RCPTs.
func begin(t testing.TB, s *milter.ClientSession, auth, from string, rcpts ...string) *milter.Action {
	t.Helper()
	if auth != "" {
		if err := s.Macros(milter.CodeMail, "{auth_authen}", auth, "i", "4Fq1x2"); err != nil {
			t.Fatal(err)
		}
	}
	act, err := s.Mail("<"+from+">", nil)
	if err != nil || act.Code != milter.ActContinue {
		t.Fatalf("MAIL: %+v %v", act, err)
	}
	for _, r := range rcpts {
		act, err := s.Rcpt("<"+r+">", nil)
		if err != nil {
			t.Fatal(err)
		}
		if act.Code != milter.ActContinue {
			return act
		}
	}
	return nil
}

// message sends header fields and body as Postfix would.
func message(t testing.TB, s *milter.ClientSession, raw []byte) ([]milter.ModifyAction, *milter.Action) {
	t.Helper()
	i := bytes.Index(raw, []byte("\r\n\r\n"))
	// Folded lines go with their field, joined by bare LF as Postfix sends them.
	folded := strings.NewReplacer("\r\n\t", "\n\t", "\r\n ", "\n ").Replace(string(raw[:i]))
	for _, l := range strings.Split(folded, "\r\n") {
		name, value, _ := strings.Cut(l, ":")
		if !s.ProtocolOption(milter.OptHeaderLeadingSpace) {
			t.Fatal("SMFIP_HDR_LEADSPC not negotiated")
		}
		act, err := s.HeaderField(name, value)
		if err != nil || act.Code != milter.ActContinue {
			t.Fatalf("header: %+v %v", act, err)
		}
	}
	act, err := s.HeaderEnd()
	if err != nil {
		t.Fatal(err)
	}
	if act.Code != milter.ActContinue {
		return nil, act
	}
	mods, act, err := s.BodyReadFrom(bytes.NewReader(raw[i+4:]))
	if err != nil {
		t.Fatal(err)
	}
	return mods, act
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "sidecar", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestMilter(t *testing.T) {
	h := start(t, func(c *Config) { c.RateBurst = 3 })
	s := h.session(t)
	defer s.Close()

	// Outgoing encrypted: accepted, client headers stripped.
	if act := begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example"); act != nil {
		t.Fatalf("RCPT: %+v", act)
	}
	raw := append([]byte("Received: from [203.0.113.9]\r\nX-Mailer: Foo\r\n"), fixture(t, "enc-v4.eml")...)
	mods, act := message(t, s, raw)
	if act.Code != milter.ActAccept {
		t.Fatalf("encrypted: %+v", act)
	}
	deleted := map[string]bool{}
	for _, m := range mods {
		if m.Code == milter.ActChangeHeader && m.HeaderValue == "" {
			deleted[m.HeaderName] = true
		}
	}
	if !deleted["Received"] || !deleted["X-Mailer"] || len(mods) != 2 {
		t.Fatalf("modifications: %+v", mods)
	}

	// Outgoing cleartext on the same connection: 523.
	begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example")
	_, act = message(t, s, fixture(t, "neg-plain.eml"))
	if act.Code != milter.ActReplyCode || act.SMTPCode != 523 || !strings.Contains(act.SMTPText, "Invalid Unencrypted Mail") {
		t.Fatalf("cleartext: %+v", act)
	}

	// A decision taken with the header section (From is not the login)
	// waits for the end of the message: Postfix does not wait for an
	// answer at the end of the header section.
	begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example")
	forged := bytes.Replace(fixture(t, "enc-v6.eml"), []byte("From: <alice@chat.example>"), []byte("From: <mallory@chat.example>"), 1)
	if _, act = message(t, s, forged); act.Code != milter.ActReplyCode || act.SMTPCode != 554 {
		t.Fatalf("forged From: %+v", act)
	}

	// Next message: over the burst of 3, refused at RCPT with 450.
	act = begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example")
	if act == nil || act.SMTPCode != 450 || !strings.HasPrefix(act.SMTPText, "4.7.1 ") {
		t.Fatalf("rate limit: %+v", act)
	}
	if err := s.Abort(); err != nil {
		t.Fatal(err)
	}

	// Incoming to a chatmail user: From forged is no issue, cleartext is.
	s2 := h.session(t)
	defer s2.Close()
	begin(t, s2, "", "carol@other.example", "bob@chat.example")
	_, act = message(t, s2, fixture(t, "neg-plain.eml"))
	if act.SMTPCode != 523 {
		t.Fatalf("incoming cleartext: %+v", act)
	}

	for _, c := range []struct {
		dir, reason string
		want        float64
	}{{"out", "encrypted", 1}, {"out", "cleartext", 1}, {"out", "bad_from", 1}, {"in", "cleartext", 1}, {"in", "bounce", 0}} {
		got := testutil.ToFloat64(h.m.Verdicts.WithLabelValues(c.dir, c.reason))
		if got != c.want {
			t.Errorf("verdicts{%s,%s} = %v, want %v", c.dir, c.reason, got, c.want)
		}
	}
	if got := testutil.ToFloat64(h.m.RcptRefusals.WithLabelValues("rate_limited")); got != 1 {
		t.Errorf("rcpt_refusals{rate_limited} = %v, want 1", got)
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	n, err := testutil.GatherAndCount(reg, "chatmail_milter_verdicts_total")
	if err != nil || n != len(mailpolicy.Reasons[mailpolicy.Incoming])+len(mailpolicy.Reasons[mailpolicy.Outgoing]) {
		t.Fatalf("pre-created series: %d %v", n, err)
	}
}

// TestDrain checks that a shutdown waits for a message in progress,
// answers it, and closes idle sessions right away.
func TestDrain(t *testing.T) {
	h := start(t, nil)
	idle := h.session(t)
	defer idle.Close()
	busy := h.session(t)
	defer busy.Close()
	begin(t, busy, "alice@chat.example", "alice@chat.example", "carol@other.example")
	time.Sleep(50 * time.Millisecond) // let the server read MAIL
	h.cancel()
	select {
	case err := <-h.done:
		t.Fatalf("the drain ended with a message in progress: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	// New connections are refused.
	if c, err := net.Dial("unix", h.sock); err == nil {
		c.Close()
		t.Fatal("still accepting")
	}
	_, act := message(t, busy, fixture(t, "enc-v6.eml"))
	if act.Code != milter.ActAccept {
		t.Fatalf("in-flight message: %+v", act)
	}
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the drain did not end after the last message")
	}
	h.done <- nil // for the cleanup
}

// TestInternalFailureWithoutReply checks that a failure in a callback
// Postfix does not wait for (here MAIL, with no engine to start the
// transaction) is answered at the next reply: a temporary failure, counted,
// never an accept.
func TestInternalFailureWithoutReply(t *testing.T) {
	h := start(t, nil)
	broken := startBroken(t, h.m)
	sess := broken.session(t)
	defer sess.Close()
	act := begin(t, sess, "", "carol@other.example", "bob@chat.example")
	if act == nil || act.SMTPCode != 451 {
		t.Fatalf("RCPT after a failed MAIL: %+v, want 451", act)
	}
	if got := testutil.ToFloat64(h.m.Verdicts.WithLabelValues("in", string(mailpolicy.ReasonInternal))); got != 1 {
		t.Errorf("verdicts{in,internal_error} = %v", got)
	}
}

// startBroken starts a server without a policy engine, on metrics m: every
// message fails at MAIL.
func startBroken(t *testing.T, m *Metrics) *harness {
	t.Helper()
	dir, err := os.MkdirTemp("", "m") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, slog.New(slog.DiscardHandler), m)
	done := make(chan error, 1)
	cancel := serve(t, s, ln, done)
	t.Cleanup(func() { cancel(); <-done })
	return &harness{sock: filepath.Join(dir, "s"), m: m}
}

type panicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *panicCounter) Inc() { c.mu.Lock(); c.n++; c.mu.Unlock() }

// TestCallbackPanicCounted checks that a panic in a callback (here MAIL
// with no engine) is counted in the daemon's panics counter, and that the
// server goes on serving sessions.
func TestCallbackPanicCounted(t *testing.T) {
	dir, err := os.MkdirTemp("", "m") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(nil, slog.New(slog.DiscardHandler), NewMetrics(prometheus.NewRegistry()))
	panics := &panicCounter{}
	s.Panics = panics
	done := make(chan error, 1)
	shutdown := serve(t, s, ln, done)
	h := &harness{sock: filepath.Join(dir, "s")}
	for i := range 2 {
		sess := h.session(t)
		if act := begin(t, sess, "", "carol@other.example", "bob@chat.example"); act == nil || act.SMTPCode != 451 {
			t.Fatalf("session %d: RCPT after a failed MAIL: %+v, want 451", i, act)
		}
		if err := sess.Close(); err != nil {
			t.Fatal(err)
		}
	}
	shutdown()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	panics.mu.Lock()
	defer panics.mu.Unlock()
	if panics.n != 2 {
		t.Errorf("panics counted: %d, want 2", panics.n)
	}
}
