package authhttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"chatmail.dev/doveauth/accountdict"
	"chatmail.dev/doveauth/passhash"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/logging/logtest"
)

// memStore is an in-memory account store; down makes it fail like an
// unreachable database, slow delays Get.
type memStore struct {
	mu    sync.Mutex
	accs  map[string]*accounts.Account
	tombs map[string]bool
	down  bool
	gets  int
	slow  time.Duration
}

var errDown = errors.New("connection refused")

func (m *memStore) Get(ctx context.Context, addr string) (*accounts.Account, error) {
	m.mu.Lock()
	slow := m.slow
	m.mu.Unlock()
	if slow > 0 {
		time.Sleep(slow)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gets++
	if m.down {
		return nil, errDown
	}
	a, ok := m.accs[addr]
	if !ok {
		return nil, accounts.ErrNotFound
	}
	c := *a
	return &c, nil
}

func (m *memStore) Credentials(ctx context.Context, addr string) (accounts.Credentials, error) {
	a, err := m.Get(ctx, addr)
	if err != nil {
		return accounts.Credentials{}, err
	}
	return accounts.Credentials{PasswordHash: a.PasswordHash, Blocked: a.Blocked}, nil
}

func (m *memStore) Create(ctx context.Context, n accounts.New) (*accounts.Account, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, false, errDown
	}
	if m.tombs[string(n.Tombstone)] {
		return nil, false, accounts.ErrTombstoned
	}
	if a, ok := m.accs[n.Address]; ok {
		return a, false, nil
	}
	a := &accounts.Account{Address: n.Address, PasswordHash: n.PasswordHash}
	m.accs[n.Address] = a
	return a, true, nil
}

func (m *memStore) HasTombstone(ctx context.Context, tombstone []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return false, errDown
	}
	return m.tombs[string(tombstone)], nil
}

func (m *memStore) TouchLogin(context.Context, string, time.Time) error       { return nil }
func (m *memStore) UpdateQuota(context.Context, string, accounts.Quota) error { return nil }

func (m *memStore) Each(ctx context.Context, fn func(*accounts.Account) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return errDown
	}
	for _, a := range m.accs {
		if err := fn(a); err != nil {
			return err
		}
	}
	return nil
}

var testKey = accounts.TombstoneKey("0123456789abcdef0123456789abcdef")

func newService(log *slog.Logger) (*accountdict.Service, *memStore) {
	svc, st, _ := newServiceReg(log)
	return svc, st
}

func newServiceReg(log *slog.Logger) (*accountdict.Service, *memStore, *prometheus.Registry) {
	st := &memStore{accs: map[string]*accounts.Account{}, tombs: map[string]bool{}}
	c := config.Defaults()
	c.Mail.Domains = []string{"chat.test"}
	c.Accounts.MailboxesDir = "/home/vmail/mail"
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	return &accountdict.Service{Store: st, Mail: c.Mail, Accounts: c.Accounts, Log: log, Metrics: accountdict.NewMetrics(reg), TombstoneKey: testKey}, st, reg
}

type counter struct{ n atomic.Int64 }

func (c *counter) Inc() { c.n.Add(1) }

// serve runs srv on a unix socket until the test ends and returns its path.
func serve(t *testing.T, srv *Server) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "http.sock")
	ln, err := net.Listen("unix", sock)
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
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return sock
}

// raw sends req as is on a new connection to sock and returns the status
// and the body of the answer.
func raw(t *testing.T, sock, req string) (int, string) {
	t.Helper()
	status, body, err := rawErr(sock, req)
	if err != nil {
		t.Fatalf("%.80q: %v", req, err)
	}
	return status, body
}

func rawErr(sock, req string) (int, string, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return 0, "", err
	}
	if _, err := io.WriteString(c, req); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// dovecot is a request as Dovecot 2.4.1's Lua HTTP client sends it through
// proxy_socket_path (captured from chatmail-auth.lua): the target in
// absolute form, one connection per request.
func dovecot(path string, form ...string) string {
	var b strings.Builder
	for i := 0; i+1 < len(form); i += 2 {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(form[i] + "=" + strings.ReplaceAll(url.QueryEscape(form[i+1]), "+", "%20"))
	}
	return "POST http://doveauth" + path + " HTTP/1.1\r\n" +
		"Host: doveauth\r\n" +
		"Date: Sun, 29 Nov 2026 15:32:29 GMT\r\n" +
		"Content-Length: " + strconv.Itoa(b.Len()) + "\r\n" +
		"Content-Type: application/x-www-form-urlencoded\r\n" +
		"Connection: close\r\n\r\n" + b.String()
}

func fields(body string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// verify checks password against a {SHA512-CRYPT} hash, as Dovecot does.
func verify(t *testing.T, hash, password string) bool {
	t.Helper()
	h, ok := strings.CutPrefix(hash, "{SHA512-CRYPT}")
	parts := strings.Split(h, "$") // "", "6", salt, digest
	if !ok || len(parts) != 4 || parts[1] != "6" {
		t.Fatalf("hash %q is no {SHA512-CRYPT}", hash)
	}
	return passhash.SHA512CryptWithSalt(password, parts[2], 0) == h
}

// The captured requests of a first login, byte for byte, then the ones
// of the next login and of a delivery.
func TestDovecotCapture(t *testing.T) {
	svc, st := newService(nil)
	sock := serve(t, &Server{Accounts: svc, RequestTimeout: 5 * time.Second})
	const user, pass = "cap12345x@chat.test", "p&ss=w%rd +x"
	status, body := raw(t, sock, "POST http://doveauth/passdb HTTP/1.1\r\nHost: doveauth\r\nDate: Sun, 29 Nov 2026 15:32:29 GMT\r\nContent-Length: 45\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\nuser=cap12345x%40chat.test&password_length=12")
	if status != 404 || body != "" {
		t.Fatalf("passdb of a new user: %d %q, want 404", status, body)
	}
	status, body = raw(t, sock, "POST http://doveauth/create HTTP/1.1\r\nHost: doveauth\r\nDate: Sun, 29 Nov 2026 15:32:29 GMT\r\nContent-Length: 58\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\nuser=cap12345x%40chat.test&password=p%26ss%3Dw%25rd%20%2Bx")
	f := fields(body)
	if status != 200 || !verify(t, f["password"], pass) {
		t.Fatalf("create: %d %q", status, body)
	}
	if a := st.accs[user]; a == nil || a.PasswordHash != f["password"] {
		t.Fatalf("stored account %+v", a)
	}
	status, body = raw(t, sock, dovecot("/passdb", "user", user, "password_length", strconv.Itoa(len(pass))))
	if status != 200 || fields(body)["password"] != f["password"] {
		t.Errorf("passdb of the new account: %d %q", status, body)
	}
	status, body = raw(t, sock, dovecot("/userdb", "user", user))
	if want := "home=/home/vmail/mail/" + user + "\nuid=vmail\ngid=vmail\n"; status != 200 || body != want {
		t.Errorf("userdb: %d %q, want %q", status, body, want)
	}
	status, body = raw(t, sock, dovecot("/userdb", "user", "zzzzzzzzz@chat.test"))
	if status != 404 {
		t.Errorf("userdb of an unknown user: %d %q", status, body)
	}
	// A second first login of the same address (IMAP and SMTP at once)
	// gets the hash the first one stored; Dovecot checks its password.
	status, body = raw(t, sock, dovecot("/create", "user", user, "password", "another-password"))
	if status != 200 || fields(body)["password"] != f["password"] || len(st.accs) != 1 {
		t.Errorf("create of an existing account: %d %q", status, body)
	}
	status, body = raw(t, sock, dovecot("/users"))
	if status != 200 || body != "user="+user+"\n" {
		t.Errorf("users: %d %q", status, body)
	}
}

// Every creation rule of the dict passdb holds over HTTP: a refusal is 404
// (Dovecot: unknown user), the rate limit and the store's failures 503
// (Dovecot: temporary failure).
func TestCreationRules(t *testing.T) {
	svc, st, reg := newServiceReg(nil)
	sock := serve(t, &Server{Accounts: svc, RequestTimeout: 5 * time.Second})
	const pass = "Correct-Horse-9"
	st.tombs[string(testKey.Hash("deleted01@chat.test"))] = true
	for _, c := range []struct{ name, user, pass string }{
		{"foreign domain", "abcdefghi@other.test", pass},
		{"local part too short", "abcdefgh@chat.test", pass},
		{"local part too long", "abcdefghij@chat.test", pass},
		{"plus sign", "abcd+efgh@chat.test", pass},
		{"non-ASCII", "abcdéfghi@chat.test", pass},
		{"short password", "abcdefghi@chat.test", "1234567"},
		{"long password", "abcdefghi@chat.test", strings.Repeat("p", 129)},
		{"tombstone", "deleted01@chat.test", pass},
		{"no address", "abcdefghi", pass},
	} {
		status, body := raw(t, sock, dovecot("/create", "user", c.user, "password", c.pass))
		if status != 404 || body != "" {
			t.Errorf("%s: %d %q, want 404", c.name, status, body)
		}
	}
	if len(st.accs) != 0 {
		t.Fatalf("accounts created: %v", st.accs)
	}
	svc.Accounts.Registration = "closed"
	if status, _ := raw(t, sock, dovecot("/create", "user", "abcdefghi@chat.test", "password", pass)); status != 404 || len(st.accs) != 0 {
		t.Errorf("closed registration: %d, accounts %v", status, st.accs)
	}
	svc.Accounts.Registration = "open"
	// An overlong password is "not found" for an existing account too,
	// before the store is asked: Dovecot never hashes it.
	if status, _ := raw(t, sock, dovecot("/create", "user", "abcdefghi@chat.test", "password", pass)); status != 200 {
		t.Fatalf("creation: %d", status)
	}
	gets := st.gets
	if status, body := raw(t, sock, dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "129")); status != 404 || st.gets != gets {
		t.Errorf("129-byte password of an existing account: %d %q, store asked %d times", status, body, st.gets-gets)
	}
	if status, _ := raw(t, sock, dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "128")); status != 200 {
		t.Errorf("128-byte password of an existing account: %d", status)
	}
	// The creation rate: a burst of 10, then "try again later".
	var codes []int
	for i := range 12 {
		status, body := raw(t, sock, dovecot("/create", "user", fmt.Sprintf("user%05d@chat.test", i), "password", pass))
		codes = append(codes, status)
		if status == 503 && fields(body)["error"] != "too many new accounts, try again later" {
			t.Errorf("rate limited: %q", body)
		}
	}
	if want := "[200 200 200 200 200 200 200 200 200 503 503 503]"; fmt.Sprint(codes) != want {
		t.Errorf("creations after the first: %v, want %s", codes, want)
	}
	want := `
# HELP chatmail_doveauth_lookups_total Dict lookups answered, by kind and result.
# TYPE chatmail_doveauth_lookups_total counter
`
	for _, kr := range []string{`create",result="created"} 10`, `create",result="notfound"} 10`, `create",result="ratelimited"} 3`, `passdb",result="found"} 1`, `passdb",result="notfound"} 1`} {
		want += `chatmail_doveauth_lookups_total{kind="` + kr + "\n"
	}
	if err := testutil.GatherAndCompare(nonZero{reg}, strings.NewReader(want), "chatmail_doveauth_lookups_total"); err != nil {
		t.Error(err)
	}
}

func TestBlocked(t *testing.T) {
	svc, st := newService(nil)
	sock := serve(t, &Server{Accounts: svc})
	st.accs["blockedxx@chat.test"] = &accounts.Account{Address: "blockedxx@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y", Blocked: true}
	for _, req := range []string{
		dovecot("/passdb", "user", "blockedxx@chat.test", "password_length", "15"),
		dovecot("/create", "user", "blockedxx@chat.test", "password", "Correct-Horse-9"),
	} {
		status, body := raw(t, sock, req)
		f := fields(body)
		if status != 403 || f["password"] != "{SHA512-CRYPT}$6$x$y" || f["reason"] != BlockedReason {
			t.Errorf("blocked: %d %q", status, body)
		}
	}
	// Blocked accounts still get mail (userdb).
	if status, _ := raw(t, sock, dovecot("/userdb", "user", "blockedxx@chat.test")); status != 200 {
		t.Errorf("userdb of a blocked account: %d", status)
	}
}

// While the store cannot answer every question is 503, never 404 (which
// Dovecot would take for an unknown user) and never a new account; the
// same before the schema is ready.
func TestUnavailable(t *testing.T) {
	svc, st := newService(nil)
	ready := atomic.Bool{}
	ready.Store(true)
	sock := serve(t, &Server{Accounts: svc, Ready: ready.Load})
	st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y"}
	reqs := []string{
		dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "15"),
		dovecot("/passdb", "user", "zyxwvutsr@chat.test", "password_length", "15"),
		dovecot("/create", "user", "zyxwvutsr@chat.test", "password", "Correct-Horse-9"),
		dovecot("/userdb", "user", "abcdefghi@chat.test"),
		dovecot("/users"),
	}
	for _, state := range []string{"down", "not ready"} {
		st.down, st.gets = state == "down", 0
		ready.Store(state != "not ready")
		for _, req := range reqs {
			status, body := raw(t, sock, req)
			if status != 503 || !strings.HasPrefix(body, "error=") || !strings.Contains(body, "try again later") {
				t.Errorf("%s: %q: %d %q, want 503", state, req, status, body)
			}
		}
		if state == "not ready" && st.gets != 0 {
			t.Error("the store was asked before it was ready")
		}
	}
	if len(st.accs) != 1 {
		t.Errorf("accounts %v", st.accs)
	}
}

func TestBadRequests(t *testing.T) {
	svc, st := newService(nil)
	sock := serve(t, &Server{Accounts: svc})
	form := "Content-Type: application/x-www-form-urlencoded\r\n"
	for _, c := range []struct {
		req  string
		want int
	}{
		{"GET /passdb?user=abcdefghi%40chat.test&password_length=3 HTTP/1.1\r\nHost: doveauth\r\nConnection: close\r\n\r\n", 405},
		{dovecot("/account", "user", "abcdefghi@chat.test"), 400},
		{dovecot("/", "user", "abcdefghi@chat.test"), 400},
		{dovecot("/passdb", "user", "abcdefghi@chat.test"), 400},
		{dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "-1"), 400},
		{dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "x"), 400},
		{dovecot("/create", "user", "abcdefghi@chat.test"), 400},
		{dovecot("/create", "user", "abcdefghi@chat.test", "user", "zyxwvutsr@chat.test", "password", "Correct-Horse-9"), 400},
		{dovecot("/userdb"), 400},
		{"POST /userdb HTTP/1.1\r\nHost: doveauth\r\nContent-Type: text/plain\r\nContent-Length: 24\r\nConnection: close\r\n\r\nuser=abcdefghi@chat.test", 415},
		{"POST /userdb HTTP/1.1\r\nHost: doveauth\r\n" + form + "Content-Length: 7\r\nConnection: close\r\n\r\nuser=%G", 400},
		{"POST /create HTTP/1.1\r\nHost: doveauth\r\n" + form + "Content-Length: 70000\r\nConnection: close\r\n\r\nuser=abcdefghi%40chat.test&password=" + strings.Repeat("p", 70000-36), 400},
	} {
		status, body := raw(t, sock, c.req)
		if status != c.want {
			t.Errorf("%.100q: %d %q, want %d", c.req, status, body, c.want)
		}
	}
	if len(st.accs) != 0 {
		t.Errorf("accounts %v", st.accs)
	}
}

// Keep-alive works too (Dovecot sends Connection: close, but another
// client may not), with the target in origin form as well.
func TestKeepAlive(t *testing.T) {
	svc, _ := newService(nil)
	sock := serve(t, &Server{Accounts: svc, IdleTimeout: time.Minute})
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for i := range 3 {
		resp, err := c.PostForm("http://doveauth/create", url.Values{"user": {fmt.Sprintf("abcdefgh%d@chat.test", i)}, "password": {"Correct-Horse-9"}})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(string(b), "password={SHA512-CRYPT}") {
			t.Errorf("%d %q", resp.StatusCode, b)
		}
	}
}

// A panic in a handler is a 500 (for Dovecot a temporary failure), logged
// and counted; the server goes on.
func TestPanic(t *testing.T) {
	log, _, out := logtest.New(false)
	svc, st := newService(log)
	p := &counter{}
	sock := serve(t, &Server{Accounts: panicky{svc}, Log: log, Panics: p})
	st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test"}
	if status, body := raw(t, sock, dovecot("/userdb", "user", "abcdefghi@chat.test")); status != 500 || !strings.HasPrefix(body, "error=") {
		t.Errorf("panic: %d %q", status, body)
	}
	if p.n.Load() != 1 || !strings.Contains(out.String(), "panic while serving a request") {
		t.Errorf("panics counted %d, log %q", p.n.Load(), out.String())
	}
	if status, _ := raw(t, sock, dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "3")); status != 200 {
		t.Errorf("after the panic: %d", status)
	}
}

type panicky struct{ *accountdict.Service }

func (panicky) Userdb(context.Context, string) (accountdict.User, accountdict.Result, error) {
	panic("bug")
}

// Shutdown lets a request in progress be answered, refuses new
// connections, and returns once the connections are gone.
func TestShutdownDrains(t *testing.T) {
	svc, st := newService(nil)
	st.slow = 300 * time.Millisecond
	srv := &Server{Accounts: svc}
	sock := filepath.Join(t.TempDir(), "http.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	answered := make(chan int, 1)
	go func() {
		status, _, err := rawErr(sock, dovecot("/userdb", "user", "abcdefghi@chat.test"))
		if err != nil {
			t.Error(err)
		}
		answered <- status
	}()
	time.Sleep(100 * time.Millisecond) // the request is in the store
	start := time.Now()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if status := <-answered; status != 404 {
		t.Errorf("request in progress at shutdown: %d, want its answer 404", status)
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Errorf("Shutdown returned after %v, before the request was answered", d)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if _, err := net.Dial("unix", sock); err == nil {
		t.Error("a connection after Shutdown")
	}
	// A budget too short: the slow request's connection is cut.
	srv2 := &Server{Accounts: svc}
	sock2 := filepath.Join(t.TempDir(), "http2.sock")
	ln2, err := net.Listen("unix", sock2)
	if err != nil {
		t.Fatal(err)
	}
	go func() { served <- srv2.Serve(ln2) }()
	st.slow = 2 * time.Second
	cut := make(chan error, 1)
	go func() {
		_, _, err := rawErr(sock2, dovecot("/userdb", "user", "abcdefghi@chat.test"))
		cut <- err
	}()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv2.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown out of budget: %v", err)
	}
	if err := <-cut; err == nil {
		t.Error("the request cut by the budget got an answer")
	}
	<-served
}

// Under No-Log the log names no one; in no mode does it, or an answer,
// hold a password; errors in answers name no one (Dovecot logs them).
func TestNoLogNamesNoOne(t *testing.T) {
	const (
		user, pass   = "abcdefghi@chat.test", "Corr3ct-Horse-Battery"
		fresh, fpass = "zyxwvutsr@chat.test", "Fre5h-Account-Secret"
		short        = "qponmlkji@chat.test"
		shortPass    = "Sh0rt-pw"
		dbHost       = "127.0.0.1"
	)
	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			log, _, out := logtest.New(on)
			svc, _ := newService(log)
			sock := serve(t, &Server{Accounts: svc, Log: log})
			var answers []string
			for _, req := range []string{
				dovecot("/create", "user", user, "password", pass),
				dovecot("/create", "user", fresh, "password", fpass),
				dovecot("/create", "user", short, "password", shortPass),
				dovecot("/passdb", "user", user, "password_length", "21"),
				dovecot("/userdb", "user", user),
			} {
				_, body := raw(t, sock, req)
				answers = append(answers, body)
			}
			// PostgreSQL down: a real store, nothing listening.
			store, err := accounts.Open(context.Background(), "postgres://chatmail@"+dbHost+":1/chatmail?sslmode=disable&connect_timeout=2", 2)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			down, _ := newService(log)
			down.Store = store
			dsock := serve(t, &Server{Accounts: down, Log: log})
			var failures []string
			for _, req := range []string{
				dovecot("/create", "user", fresh, "password", fpass),
				dovecot("/passdb", "user", user, "password_length", "21"),
				dovecot("/userdb", "user", user),
				dovecot("/users"),
			} {
				status, body := raw(t, dsock, req)
				if status != 503 {
					t.Errorf("PostgreSQL down: %d %q, want 503", status, body)
				}
				failures = append(failures, body)
			}
			text := out.String()
			if leaks := logtest.Leaks(text, pass, fpass, shortPass); len(leaks) > 0 {
				t.Errorf("the log holds passwords %q:\n%s", leaks, text)
			}
			if leaks := logtest.Leaks(strings.Join(answers, "\n"), pass, fpass, shortPass); len(leaks) > 0 {
				t.Errorf("answers hold passwords %q", leaks)
			}
			if leaks := logtest.Leaks(strings.Join(failures, "\n"), user, fresh, fpass, dbHost); len(leaks) > 0 {
				t.Errorf("failure answers (Dovecot logs them) hold %q:\n%s", leaks, strings.Join(failures, "\n"))
			}
			for _, want := range []string{"lookup failed", "listing accounts failed"} {
				if !strings.Contains(text, want) {
					t.Errorf("the log lacks %q:\n%s", want, text)
				}
			}
			if !on {
				if !strings.Contains(text, fresh) || !strings.Contains(text, dbHost) {
					t.Errorf("with No-Log off the log does not name the new user and the database:\n%s", text)
				}
				return
			}
			if leaks := logtest.Leaks(text, user, fresh, short, dbHost); len(leaks) > 0 {
				t.Errorf("under No-Log the log names %q:\n%s", leaks, text)
			}
			if bad := logtest.Shapes(text); len(bad) > 0 {
				t.Errorf("under No-Log the log holds the shape of an identity:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}

// nonZero gathers the samples that are not zero.
type nonZero struct{ prometheus.Gatherer }

func (g nonZero) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := g.Gatherer.Gather()
	for _, mf := range mfs {
		var kept []*dto.Metric
		for _, m := range mf.Metric {
			if m.GetCounter().GetValue() != 0 {
				kept = append(kept, m)
			}
		}
		mf.Metric = kept
	}
	return mfs, err
}

// FuzzRequest: whatever a peer sends, the answer is one of the documented
// statuses with key=value lines, nothing panics, and no account is made
// without a well-formed /create.
func FuzzRequest(f *testing.F) {
	for _, s := range []string{
		dovecot("/passdb", "user", "abcdefghi@chat.test", "password_length", "12"),
		dovecot("/create", "user", "zyxwvutsr@chat.test", "password", "Correct-Horse-9"),
		dovecot("/userdb", "user", "abcdefghi@chat.test"),
		dovecot("/users"),
		"GET /userdb HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /create HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nuser=\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	svc, st := newService(nil)
	st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y"}
	p := &counter{}
	srv := &Server{Accounts: svc, Panics: p}
	statuses := map[int]bool{200: true, 400: true, 403: true, 404: true, 405: true, 415: true, 503: true}
	f.Fuzz(func(t *testing.T, in []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if !statuses[w.Code] || p.n.Load() != 0 {
			t.Fatalf("%q: status %d, panics %d", in, w.Code, p.n.Load())
		}
		for _, l := range strings.Split(strings.TrimSuffix(w.Body.String(), "\n"), "\n") {
			if l != "" && !strings.Contains(l, "=") {
				t.Fatalf("%q: answer line %q", in, l)
			}
		}
		if w.Code == 200 && req.URL.Path == "/create" && req.PostForm.Get("password") == "" {
			t.Fatalf("%q: created without a password", in)
		}
	})
}
