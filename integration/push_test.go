package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"chatmail.dev/integration/stack"
)

// Push notifications: Dovecot's LMTP runs deploy/dovecot*/
// push-notification.lua on each delivery, which sets /private/messagenew
// in chatmail-metadata's dict; chatmail-metadata then posts each of the
// recipient's device tokens to the push gateway, here a fake one the test
// runs (scripts/stack up --push-gateway).

// pushWait bounds the wait for a POST: a delivery wakes the worker at
// once, a retry comes 8 s after a failure (push.BaseDelay).
const pushWait = 30 * time.Second

// pushCooldown is the stack's push_cooldown, left at its default: after a
// POST a token is not posted again for that long.
const pushCooldown = 30 * time.Second

// gateway is a fake push gateway: it records every POST and answers each
// token with the statuses scripted for it, in turn, then 200.
type gateway struct {
	srv   *httptest.Server
	mu    sync.Mutex
	posts []post
	// answers holds, per token, the statuses of its next POSTs.
	answers map[string][]int
	notify  chan struct{}
}

type post struct {
	method, path, token string
	status              int
	at                  time.Time
}

func newGateway(t *testing.T) *gateway {
	g := &gateway{answers: map[string][]int{}, notify: make(chan struct{}, 1)}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		tok := string(body)
		g.mu.Lock()
		status := http.StatusOK
		if a := g.answers[tok]; len(a) > 0 {
			status, g.answers[tok] = a[0], a[1:]
		}
		g.posts = append(g.posts, post{r.Method, r.URL.Path, tok, status, time.Now()})
		g.mu.Unlock()
		select {
		case g.notify <- struct{}{}:
		default:
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// url is where the stack posts.
func (g *gateway) url() string { return g.srv.URL + "/notify" }

// answer scripts the statuses of tok's next POSTs.
func (g *gateway) answer(tok string, statuses ...int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.answers[tok] = append(g.answers[tok], statuses...)
}

// up drops what is left of tok's scripted answers: 200 from now on.
func (g *gateway) up(tok string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.answers, tok)
}

// postsOf returns the POSTs of tok so far.
func (g *gateway) postsOf(tok string) []post {
	g.mu.Lock()
	defer g.mu.Unlock()
	var ps []post
	for _, p := range g.posts {
		if p.token == tok {
			ps = append(ps, p)
		}
	}
	return ps
}

// all returns every POST so far.
func (g *gateway) all() []post {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.posts)
}

// waitPosts waits until tok has had n POSTs and returns them.
func (g *gateway) waitPosts(t *testing.T, tok string, n int, d time.Duration) []post {
	t.Helper()
	end := time.NewTimer(d)
	defer end.Stop()
	for {
		if ps := g.postsOf(tok); len(ps) >= n {
			return ps
		}
		select {
		case <-g.notify:
		case <-end.C:
			t.Fatalf("the gateway got %d POSTs of the token within %v, want %d (all POSTs: %d)", len(g.postsOf(tok)), d, n, len(g.all()))
		}
	}
}

// pushStack starts a stack whose chatmail-metadata posts to a fake gateway.
func pushStack(t *testing.T) (*stack.Stack, *gateway) {
	t.Helper()
	g := newGateway(t)
	s := stack.Start(t, stack.PushGateway(g.url()))
	requireMetadata(t, s)
	if s.Env["PUSH_GATEWAY"] != g.url() {
		t.Fatalf("the stack posts to %q, want %q", s.Env["PUSH_GATEWAY"], g.url())
	}
	return s, g
}

// withToken creates an account that has set a device token, as Delta
// Chat's mobile apps do after each login, and returns both.
func withToken(t *testing.T, s *stack.Stack) (string, string) {
	t.Helper()
	addr, tok := newAddr(s), "openpgp:"+rand.Text()
	c := imapSession(t, s, addr, goodPassword)
	if err := setMetadata(c, "INBOX", metaDeviceToken, &tok); err != nil {
		t.Fatalf("SETMETADATA devicetoken: %v", err)
	}
	return addr, tok
}

// deliver hands Dovecot's LMTP a message for to from another server.
func deliver(t *testing.T, s *stack.Stack, to, from string) {
	t.Helper()
	lmtpDeliverFrom(t, s, to, from, rand.Text()+"@elsewhere.test")
}

// New mail for an account with a device token makes exactly one POST of
// the raw token to the gateway; mail an account sends itself (its own
// copy) and mail for an account without a token make none. Mail within
// the token's cooldown after a POST, however much, makes one more POST
// when the cooldown ends. A 410 answer removes the token: the next mail
// posts nothing.
func TestPushNotification(t *testing.T) {
	s, g := pushStack(t)
	addr, tok := withToken(t, s)
	quiet := newAddr(s)
	wantLogin(t, s, quiet, goodPassword, "")

	deliver(t, s, addr, "someone@elsewhere.test")
	ps := g.waitPosts(t, tok, 1, pushWait)
	if p := ps[0]; p.method != http.MethodPost || p.path != "/notify" {
		t.Errorf("the gateway got %s %s, want POST /notify", p.method, p.path)
	}
	deliver(t, s, quiet, "someone@elsewhere.test")
	deliver(t, s, addr, addr) // its own copy: no notification
	time.Sleep(3 * time.Second)
	if n := len(g.postsOf(tok)); n != 1 {
		t.Errorf("%d POSTs of the token after one mail from another and one from itself, want 1", n)
	}
	if all := g.all(); len(all) != 1 {
		t.Errorf("the gateway got %d POSTs, want 1 (the account without a token got mail too): %+v", len(all), all)
	}
	if n := pendingPushes(t, s, addr); n != 0 {
		t.Errorf("%d notifications still queued after the gateway took it", n)
	}

	// Three mails within the cooldown: one POST, when it ends. The
	// gateway answers it 410 Gone: it cannot use the token any more.
	g.answer(tok, http.StatusGone)
	for range 3 {
		deliver(t, s, addr, "someone@elsewhere.test")
	}
	ps = g.waitPosts(t, tok, 2, pushCooldown+pushWait)
	if d := ps[1].at.Sub(ps[0].at); d < pushCooldown-time.Second {
		t.Errorf("the second POST came %v after the first, within the cooldown of %v", d, pushCooldown)
	}
	eventually(t, 10*time.Second, func() error {
		if toks := deviceTokens(t, s, addr); len(toks) != 0 {
			return fmt.Errorf("the store still holds the token after 410: %q", toks)
		}
		return nil
	})
	c := imapSession(t, s, addr, goodPassword)
	if got := getMetadata(t, c, "INBOX", metaDeviceToken)[metaDeviceToken]; got != "" {
		t.Errorf("after 410 GETMETADATA devicetoken = %q, want none", got)
	}
	deliver(t, s, addr, "someone@elsewhere.test")
	time.Sleep(3 * time.Second)
	if n := len(g.postsOf(tok)); n != 2 {
		t.Errorf("%d POSTs of the token, want 2 (three mails within the cooldown: one; none after the 410)", n)
	}
}

// An IMAP client can SETMETADATA INBOX /private/messagenew, the key the
// Lua script sets on delivery: no POST, however often asked (LMTP alone,
// on its own dict name, announces new mail). The reply does not matter
// (chatmail-metadata drops it and answers OK, so that Dovecot logs no
// error); that nothing is queued or posted does.
func TestPushNotFromIMAP(t *testing.T) {
	s, g := pushStack(t)
	addr, tok := withToken(t, s)
	c := imapSession(t, s, addr, goodPassword)
	empty := ""
	for range 5 {
		_ = setMetadata(c, "INBOX", "/private/messagenew", &empty)
	}
	if n := pendingPushes(t, s, addr); n != 0 {
		t.Errorf("%d notifications queued after SETMETADATA messagenew from IMAP, want none", n)
	}
	time.Sleep(3 * time.Second)
	if n := len(g.postsOf(tok)); n != 0 {
		t.Errorf("%d POSTs after SETMETADATA messagenew from IMAP, want none", n)
	}
	// Mail still notifies.
	deliver(t, s, addr, "someone@elsewhere.test")
	g.waitPosts(t, tok, 1, pushWait)
}

// A notification the gateway does not take is retried, and the retry
// survives a restart of chatmail-metadata: the queue is in PostgreSQL.
func TestPushRetrySurvivesRestart(t *testing.T) {
	s, g := pushStack(t)
	addr, tok := withToken(t, s)
	// Down until chatmail-metadata has restarted.
	g.answer(tok, slices.Repeat([]int{http.StatusServiceUnavailable}, 100)...)

	deliver(t, s, addr, "someone@elsewhere.test")
	g.waitPosts(t, tok, 1, pushWait)
	eventually(t, 10*time.Second, func() error {
		if n := pendingPushes(t, s, addr); n != 1 {
			return fmt.Errorf("%d notifications queued after the failed POST, want 1", n)
		}
		return nil
	})
	s.Run(t, "restart", "metadata")
	restarted := time.Now()
	g.up(tok)

	// The next retry, due 8 s after the failure (or at once, if that
	// passed during the restart), is the restarted daemon's.
	var taken []post
	eventually(t, pushWait, func() error {
		taken = nil
		for _, p := range g.postsOf(tok) {
			if p.status == http.StatusOK {
				taken = append(taken, p)
			}
		}
		if len(taken) == 0 {
			return fmt.Errorf("no POST of the queued notification taken after the restart (%d POSTs failed)", len(g.postsOf(tok)))
		}
		return nil
	})
	if taken[0].at.Before(restarted) {
		t.Errorf("the notification was taken at %v, before the restart at %v", taken[0].at, restarted)
	}
	eventually(t, 10*time.Second, func() error {
		if n := pendingPushes(t, s, addr); n != 0 {
			return fmt.Errorf("%d notifications queued after the retry was taken", n)
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	n := 0
	for _, p := range g.postsOf(tok) {
		if p.status == http.StatusOK {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the gateway took one notification %d times, want once", n)
	}
}

// pendingPushes counts the notifications queued for addr's tokens: not
// the rows that only mark a cooldown (accounts.PushDone).
func pendingPushes(t *testing.T, s *stack.Stack, addr string) int {
	t.Helper()
	var n int
	if err := db(t, s).QueryRow(context.Background(),
		`SELECT count(*) FROM push_queue q JOIN device_tokens d ON d.id = q.token_id WHERE d.address = $1 AND (NOT q.cooling OR q.again)`, addr).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
