package push

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

// gateway is a fake notification gateway: it records the tokens posted
// and answers with status(token).
type gateway struct {
	mu     sync.Mutex
	posts  []string
	status func(token string) int
	srv    *httptest.Server
}

func newGateway(t *testing.T, status func(string) int) *gateway {
	g := &gateway{status: status}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		g.mu.Lock()
		g.posts = append(g.posts, string(b))
		st := g.status
		g.mu.Unlock()
		w.WriteHeader(st(string(b)))
	}))
	t.Cleanup(g.srv.Close)
	return g
}

func (g *gateway) got() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.posts)
}

func (g *gateway) setStatus(f func(string) int) {
	g.mu.Lock()
	g.status = f
	g.mu.Unlock()
}

func status(code int) func(string) int { return func(string) int { return code } }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// setup returns a store with alice holding the tokens given, and a
// notification queued for each.
func setup(t *testing.T, tokens ...string) *accounts.Store {
	t.Helper()
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	const alice = "alice@example.org"
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	if _, _, err := s.Create(ctx, accounts.New{Address: alice, PasswordHash: "{PLAIN}x", Tombstone: key.Hash(alice)}); err != nil {
		t.Fatal(err)
	}
	for _, tok := range tokens {
		if err := s.SetDeviceToken(ctx, alice, tok, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.QueuePushes(ctx, alice, time.Now()); err != nil {
		t.Fatal(err)
	}
	return s
}

func newWorker(q Queue, g *gateway, log *slog.Logger) *Worker {
	if log == nil {
		log = discard
	}
	return &Worker{
		Queue: q, Gateway: g.srv.URL + "/notify", Concurrency: 2, GiveUp: time.Hour, Log: log,
		PollInterval: 50 * time.Millisecond, BaseDelay: 20 * time.Millisecond, PostTimeout: 2 * time.Second,
	}
}

// start runs w until the test ends, or stop is called.
func start(t *testing.T, w *Worker) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Error("worker did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func queueEmpty(s *accounts.Store) func() bool {
	return func() bool {
		_, ok, err := s.NextPushDue(context.Background())
		return err == nil && !ok
	}
}

func tokens(t *testing.T, s *accounts.Store) []string {
	toks, err := s.DeviceTokens(context.Background(), "alice@example.org", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

// 200: one POST per token, the raw token as the body, and done.
func TestDelivered(t *testing.T) {
	s := setup(t, "openpgp:tok1", "openpgp:tok2")
	g := newGateway(t, status(200))
	start(t, newWorker(s, g, nil))
	waitFor(t, "the queue to empty", queueEmpty(s))
	got := g.got()
	slices.Sort(got)
	if !slices.Equal(got, []string{"openpgp:tok1", "openpgp:tok2"}) {
		t.Errorf("posted %q", got)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(g.got()); n != 2 {
		t.Errorf("%d POSTs, want 2", n)
	}
	if toks := tokens(t, s); len(toks) != 2 {
		t.Errorf("tokens after delivery: %q", toks)
	}
}

// 410: the token goes; the other stays.
func TestGone(t *testing.T) {
	s := setup(t, "dead", "alive")
	g := newGateway(t, func(tok string) int {
		if tok == "dead" {
			return http.StatusGone
		}
		return 200
	})
	start(t, newWorker(s, g, nil))
	waitFor(t, "the queue to empty", queueEmpty(s))
	if toks := tokens(t, s); !slices.Equal(toks, []string{"alive"}) {
		t.Errorf("tokens after 410: %q", toks)
	}
}

// 500 and no answer: retried with growing delays, then given up.
func TestRetryAndGiveUp(t *testing.T) {
	s := setup(t, "tok")
	var times []time.Time
	var mu sync.Mutex
	g := newGateway(t, func(string) int {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		return 500
	})
	w := newWorker(s, g, nil)
	// Attempts at 0, 20 ms, 180 ms; the next, 1.46 s, is past the 1 s.
	w.GiveUp = time.Second
	start(t, w)
	waitFor(t, "the notification to be given up", queueEmpty(s))
	mu.Lock()
	defer mu.Unlock()
	if len(times) != 3 {
		t.Fatalf("%d attempts, want 3", len(times))
	}
	if d1, d2 := times[1].Sub(times[0]), times[2].Sub(times[1]); d1 < 20*time.Millisecond || d2 < 160*time.Millisecond {
		// Lower bounds only: a busy machine delays attempts, never
		// hastens them.
		t.Errorf("delays %v, %v: want at least 20 ms, then 160 ms", d1, d2)
	}
	if toks := tokens(t, s); len(toks) != 1 {
		t.Errorf("giving up removed the token: %q", toks)
	}
	if w.delay(0) != 20*time.Millisecond || w.delay(1) != 160*time.Millisecond || (&Worker{BaseDelay: BaseDelay}).delay(10) != MaxDelay {
		t.Errorf("delays %v %v", w.delay(0), w.delay(1))
	}
}

// A gateway that is down: the retries outlive the worker. A new worker,
// on a new connection, as after a restart, delivers.
func TestRestart(t *testing.T) {
	ctx := context.Background()
	s := setup(t, "tok")
	g := newGateway(t, status(503))
	w := newWorker(s, g, nil)
	w.BaseDelay = 300 * time.Millisecond
	stop := start(t, w)
	waitFor(t, "a first attempt", func() bool { return len(g.got()) > 0 })
	stop()
	if _, ok, _ := s.NextPushDue(ctx); !ok {
		t.Fatal("the notification was dropped at shutdown")
	}
	g.setStatus(status(200))
	w2 := newWorker(s, g, nil)
	w2.BaseDelay = 300 * time.Millisecond
	start(t, w2)
	waitFor(t, "delivery after the restart", queueEmpty(s))
	if got := g.got(); len(got) < 2 || got[len(got)-1] != "tok" {
		t.Errorf("posts %q", got)
	}
}

// A worker that dies holding a claim: another posts it when the lease
// ends, not before.
func TestLease(t *testing.T) {
	ctx := context.Background()
	s := setup(t, "tok")
	const lease = 500 * time.Millisecond
	claimed := time.Now()
	if ps, err := s.ClaimPushes(ctx, claimed, lease, 10); err != nil || len(ps) != 1 {
		t.Fatalf("claim: %v, %v", ps, err)
	}
	g := newGateway(t, status(200))
	w := newWorker(s, g, nil)
	w.Lease = lease
	start(t, w)
	waitFor(t, "the post after the lease", func() bool { return len(g.got()) == 1 })
	if d := time.Since(claimed); d < lease {
		t.Errorf("posted %v after the dead worker's claim, within its lease", d)
	}
	waitFor(t, "the queue to empty", queueEmpty(s))
}

// After a delivery a token is not posted again for the cooldown: mail
// meanwhile, however much, makes one POST when it ends; then the row
// goes, and mail is posted at once again.
func TestCooldown(t *testing.T) {
	ctx := context.Background()
	s := setup(t, "tok")
	var mu sync.Mutex
	var times []time.Time
	g := newGateway(t, func(string) int {
		mu.Lock()
		times = append(times, time.Now())
		mu.Unlock()
		return 200
	})
	w := newWorker(s, g, nil)
	const cooldown = 700 * time.Millisecond
	w.Cooldown = cooldown
	start(t, w)
	waitFor(t, "the first POST", func() bool { return len(g.got()) == 1 })
	for range 5 {
		if _, err := s.QueuePushes(ctx, "alice@example.org", time.Now()); err != nil {
			t.Fatal(err)
		}
		w.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(cooldown / 2)
	if n := len(g.got()); n != 1 {
		t.Fatalf("%d POSTs within the cooldown, want 1", n)
	}
	waitFor(t, "the POST at the cooldown's end", func() bool { return len(g.got()) == 2 })
	mu.Lock()
	if d := times[1].Sub(times[0]); d < cooldown {
		t.Errorf("the second POST %v after the first, within the cooldown", d)
	}
	mu.Unlock()
	waitFor(t, "the queue to empty after the second cooldown", queueEmpty(s))
	if n := len(g.got()); n != 2 {
		t.Errorf("%d POSTs after five mails within the cooldown, want 2", n)
	}
	// Cooled down: the next mail is posted at once.
	if _, err := s.QueuePushes(ctx, "alice@example.org", time.Now()); err != nil {
		t.Fatal(err)
	}
	w.Wake()
	waitFor(t, "the third POST", func() bool { return len(g.got()) == 3 })
}

// A 4xx other than 408, 429 and 410 refuses the notification for good:
// one POST, dropped, the token kept. 408 and 429 are retried.
func TestRefused(t *testing.T) {
	for _, c := range []struct {
		status  int
		retried bool
	}{
		{http.StatusBadRequest, false},
		{http.StatusForbidden, false},
		{http.StatusRequestEntityTooLarge, false},
		{http.StatusRequestTimeout, true},
		{http.StatusTooManyRequests, true},
		{http.StatusInternalServerError, true},
	} {
		s := setup(t, "tok")
		var mu sync.Mutex
		n := 0
		g := newGateway(t, func(string) int {
			mu.Lock()
			defer mu.Unlock()
			n++
			if n == 1 {
				return c.status
			}
			return 200
		})
		w := newWorker(s, g, nil)
		w.GiveUp = 10 * time.Second
		start(t, w)
		waitFor(t, "the queue to empty", queueEmpty(s))
		time.Sleep(100 * time.Millisecond)
		if got, want := len(g.got()), map[bool]int{false: 1, true: 2}[c.retried]; got != want {
			t.Errorf("%d: %d POSTs, want %d", c.status, got, want)
		}
		if toks := tokens(t, s); len(toks) != 1 {
			t.Errorf("%d: tokens %q, want the token kept", c.status, toks)
		}
		refused := testutil.ToFloat64(w.Metrics.attempts.WithLabelValues(outcomeRefused))
		if want := map[bool]float64{false: 1, true: 0}[c.retried]; refused != want {
			t.Errorf("%d: refused counted %v, want %v", c.status, refused, want)
		}
	}
}

// Wake starts a sleeping worker at once.
func TestWake(t *testing.T) {
	ctx := context.Background()
	s := setup(t)
	g := newGateway(t, status(200))
	w := newWorker(s, g, nil)
	w.PollInterval = time.Hour
	start(t, w)
	time.Sleep(100 * time.Millisecond) // asleep, nothing queued
	if err := s.SetDeviceToken(ctx, "alice@example.org", "tok", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.QueuePushes(ctx, "alice@example.org", time.Now()); err != nil {
		t.Fatal(err)
	}
	w.Wake()
	waitFor(t, "the post", func() bool { return len(g.got()) == 1 })
}

// On shutdown the POSTs in flight finish and are recorded.
func TestDrain(t *testing.T) {
	s := setup(t, "tok")
	var inPost atomic.Bool
	g := newGateway(t, func(string) int {
		inPost.Store(true)
		time.Sleep(300 * time.Millisecond)
		return 200
	})
	stop := start(t, newWorker(s, g, nil))
	waitFor(t, "the POST", inPost.Load)
	stop()
	// Settled: only the cooldown's marker is left, which goes unposted.
	if ps, err := s.ClaimPushes(context.Background(), time.Now(), time.Minute, 10); err != nil || len(ps) != 0 {
		t.Errorf("after the drain the delivered notification is still queued: %v, %v", ps, err)
	}
	if !queueEmpty(s)() {
		t.Error("the delivered notification's row stays after its cooldown")
	}
}

// Redirects are followed within the gateway's host only.
func TestRedirects(t *testing.T) {
	s := setup(t, "tok")
	var elsewhere atomic.Int32
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	g := newGateway(t, func(string) int { return 200 })
	redirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/here" {
			http.Redirect(w, r, "/notify2", http.StatusPermanentRedirect)
			return
		}
		if r.URL.Path == "/notify2" {
			b, _ := io.ReadAll(r.Body)
			g.mu.Lock()
			g.posts = append(g.posts, "same-host:"+string(b))
			g.mu.Unlock()
			return
		}
		http.Redirect(w, r, other.URL+"/notify", http.StatusTemporaryRedirect)
	}))
	defer redirect.Close()
	w := newWorker(s, g, nil)
	w.Gateway = redirect.URL + "/away"
	w.BaseDelay, w.GiveUp = time.Hour, 2*time.Hour
	stop := start(t, w)
	waitFor(t, "a retry being scheduled", func() bool {
		due, ok, _ := s.NextPushDue(context.Background())
		return ok && time.Until(due) > 10*time.Minute
	})
	stop()
	if elsewhere.Load() != 0 {
		t.Error("a redirect to another host was followed")
	}
	// The same host: followed, with the body.
	s2 := setup(t, "tok2")
	w2 := newWorker(s2, g, nil)
	w2.Gateway = redirect.URL + "/here"
	start(t, w2)
	waitFor(t, "delivery through a redirect", queueEmpty(s2))
	if got := g.got(); !slices.Contains(got, "same-host:tok2") {
		t.Errorf("posts %q", got)
	}
}

// Nothing the worker logs names a token, whatever the gateway answers.
func TestNoLogNamesNoOne(t *testing.T) {
	for _, nolog := range []bool{true, false} {
		log, _, buf := logtest.New(nolog)
		s := setup(t, "openpgp:gone-token", "openpgp:fail-token", "openpgp:ok-token")
		g := newGateway(t, func(tok string) int {
			switch {
			case strings.Contains(tok, "gone"):
				return 410
			case strings.Contains(tok, "fail"):
				return 500
			}
			return 200
		})
		w := newWorker(s, g, log)
		w.GiveUp = 100 * time.Millisecond
		start(t, w)
		waitFor(t, "the queue to empty", queueEmpty(s))
		out := buf.String()
		if leaks := logtest.Leaks(out, "gone-token", "fail-token", "ok-token", "alice"); len(leaks) > 0 {
			t.Errorf("nolog=%v: the log names %q:\n%s", nolog, leaks, out)
		}
		if !nolog && !strings.Contains(out, "given up") {
			t.Errorf("the paths did not log:\n%s", out)
		}
	}
}
