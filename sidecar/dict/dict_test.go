package dict

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestEscapeRoundTrip(t *testing.T) {
	for _, s := range []string{"", "plain", "a\tb\nc\rd\x01e\x00f", "\x01\x01"} {
		e := Escape(s)
		if strings.ContainsAny(e, "\t\n\r\x00") {
			t.Errorf("Escape(%q) = %q still holds a separator", s, e)
		}
		u, err := Unescape(e)
		if err != nil || u != s {
			t.Errorf("Unescape(Escape(%q)) = %q, %v", s, u, err)
		}
	}
	for _, bad := range []string{"\x01", "a\x01x"} {
		if _, err := Unescape(bad); err == nil {
			t.Errorf("Unescape(%q) accepted", bad)
		}
	}
}

// fakeHandler records what it was asked and answers from a map.
type fakeHandler struct {
	mu      sync.Mutex
	values  map[string]string
	fail    bool
	lookups []Lookup
	commits []*Tx
}

func (h *fakeHandler) Lookup(ctx context.Context, req Lookup) (string, bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lookups = append(h.lookups, req)
	if h.fail {
		return "", false, errors.New("store down")
	}
	v, ok := h.values[req.Key]
	return v, ok, nil
}

func (h *fakeHandler) Iterate(ctx context.Context, req Iterate, emit func(k, v string) error) error {
	for _, k := range []string{req.Path + "a", req.Path + "b\tc", req.Path + "d"} {
		if err := emit(k, "v"); err != nil {
			return err
		}
	}
	return nil
}

func (h *fakeHandler) Commit(ctx context.Context, tx *Tx) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.commits = append(h.commits, tx)
	if h.fail {
		return errors.New("store down")
	}
	if len(tx.Ops) == 0 {
		return ErrNotFound
	}
	return nil
}

func startServer(t *testing.T, h Handler, opts ...func(*Server)) (*Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Handler: h, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), IdleTimeout: time.Minute}
	for _, o := range opts {
		o(s)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return s, sock
}

// exchange sends the request lines and reads n reply lines.
func exchange(t *testing.T, sock, req string, n int) []string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for range n {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", lines, err)
		}
		lines = append(lines, strings.TrimSuffix(l, "\n"))
	}
	return lines
}

const hello = "H3\t2\t0\t\tauth\n"

func TestLookupReplies(t *testing.T) {
	h := &fakeHandler{values: map[string]string{"shared/k": "va\tl\nue"}}
	_, sock := startServer(t, h)
	got := exchange(t, sock, hello+"Lshared/k\tu@x\nLshared/missing\tu@x\nLshared/pass\x01tword\tu@x\n", 3)
	want := []string{"Ova\x01tl\x01nue", "N", "N"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("reply %d = %q, want %q", i, got[i], want[i])
		}
	}
	if h.lookups[2].Key != "shared/pass\tword" || h.lookups[0].User != "u@x" || h.lookups[0].Hello.DictName != "auth" {
		t.Errorf("lookups seen: %+v", h.lookups)
	}
	h.fail = true
	if got := exchange(t, sock, hello+"Lshared/k\tu@x\n", 1); !strings.HasPrefix(got[0], "F") {
		t.Errorf("failing handler answered %q, want F", got[0])
	}
}

func TestTransactions(t *testing.T) {
	h := &fakeHandler{}
	_, sock := startServer(t, h)
	got := exchange(t, sock, hello+
		"B1\tu@x\nA1\tpriv/quota/storage\t-42\nS1\tpriv/quota/messages\t7\nU1\tpriv/x\nT1\t1\t2\nC1\n"+
		"B2\tu@x\nR2\nB3\tu@x\nD3\n", 2)
	if got[0] != "O1" || got[1] != "AN3" {
		t.Errorf("commit replies %q", got)
	}
	if len(h.commits) != 2 {
		t.Fatalf("%d commits, want 2 (rolled back one must not commit)", len(h.commits))
	}
	tx := h.commits[0]
	if tx.User != "u@x" || len(tx.Ops) != 3 || tx.Ops[0] != (Op{Kind: OpAtomicInc, Key: "priv/quota/storage", Diff: -42}) ||
		tx.Ops[1] != (Op{Kind: OpSet, Key: "priv/quota/messages", Value: "7"}) || tx.Ops[2].Kind != OpUnset {
		t.Errorf("transaction %+v", tx)
	}
	h.fail = true
	if got := exchange(t, sock, hello+"B9\tu\nS9\tk\tv\nC9\n", 1); got[0] != "F9\tstore down" {
		t.Errorf("failed commit answered %q", got[0])
	}
}

func TestIterate(t *testing.T) {
	_, sock := startServer(t, &fakeHandler{})
	got := exchange(t, sock, hello+"I0\t0\tshared/userdb/\t\n", 4)
	want := []string{"Oshared/userdb/a\tv", "Oshared/userdb/b\x01tc\tv", "Oshared/userdb/d\tv", ""}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %q, want %q", i, got[i], want[i])
		}
	}
	got = exchange(t, sock, hello+"I8\t2\tshared/userdb/\t\n", 3)
	if got[0] != "Oshared/userdb/a\t" || got[2] != "" {
		t.Errorf("max rows 2 without values: %q", got)
	}
}

// A malformed command closes the connection: the protocol has no error reply.
func TestMalformedClosesConnection(t *testing.T) {
	_, sock := startServer(t, &fakeHandler{})
	for _, req := range []string{"Xfoo\n", "C5\n", "Bx\n", "B1\nA1\tk\tnot-a-number\n", "Lbad\x01escape\n", "H9\t0\t0\t\tauth\n"} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("%q: read %q, %v; want a closed connection", req, b, err)
		}
		c.Close()
	}
}

func TestLongLine(t *testing.T) {
	h := &fakeHandler{values: map[string]string{}}
	_, sock := startServer(t, h)
	key := strings.Repeat("k", 10000)
	if got := exchange(t, sock, hello+"L"+key+"\tu\n", 1); got[0] != "N" || h.lookups[0].Key != key {
		t.Errorf("10000-byte key: %q", got)
	}
	c, _ := net.Dial("unix", sock)
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go io.WriteString(c, "L"+strings.Repeat("k", MaxLineLength+10)+"\n")
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("over-long line answered %q", b)
	}
}

// Shutdown waits for idle connections to close rather than for Dovecot.
func TestShutdownClosesIdleConnections(t *testing.T) {
	s, sock := startServer(t, &fakeHandler{})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, hello)
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle connection: %v", err)
	}
}

// panicky panics on the key "boom".
type panicky struct{ fakeHandler }

func (h *panicky) Lookup(ctx context.Context, req Lookup) (string, bool, error) {
	if req.Key == "shared/boom" {
		panic("handler bug")
	}
	return h.fakeHandler.Lookup(ctx, req)
}

type panicCounter struct {
	mu sync.Mutex
	n  int
}

func (c *panicCounter) Inc() { c.mu.Lock(); c.n++; c.mu.Unlock() }

// A panic in the handler closes that connection without a reply, is
// counted, and the server goes on answering.
func TestHandlerPanic(t *testing.T) {
	h := &panicky{fakeHandler{values: map[string]string{"shared/k": "v"}}}
	panics := &panicCounter{}
	_, sock := startServer(t, h, func(s *Server) { s.Panics = panics })
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, hello+"Lshared/boom\tu@x\n"); err != nil {
		t.Fatal(err)
	}
	if reply, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Fatalf("reply %q to a request whose handler panicked", reply)
	}
	if got := exchange(t, sock, hello+"Lshared/k\tu@x\n", 1); got[0] != "Ov" {
		t.Errorf("after a panic: %q", got)
	}
	panics.mu.Lock()
	defer panics.mu.Unlock()
	if panics.n != 1 {
		t.Errorf("panics counted: %d, want 1", panics.n)
	}
}
