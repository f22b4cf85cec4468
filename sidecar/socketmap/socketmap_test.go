package socketmap

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestNetstring(t *testing.T) {
	for _, s := range []string{"", "blocked alice@chat.test", strings.Repeat("x", 5000)} {
		got, err := ReadNetstring(bufio.NewReader(strings.NewReader(string(AppendNetstring(nil, s)))), MaxRequest)
		if err != nil || got != s {
			t.Errorf("round trip of %d bytes: %v", len(s), err)
		}
	}
	for _, bad := range []string{"3:abc", "3:abcd", "x:abc,", ":abc,", "99999999999:a,", "20000:", "-1:a,", "3abc,", "00:,", "01:a,"} {
		if _, err := ReadNetstring(bufio.NewReader(strings.NewReader(bad)), MaxRequest); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzReadNetstring(f *testing.F) {
	for _, s := range []string{"21:blocked abc@chat.test,", "0:,", "5:ab", "1x", "10000:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ReadNetstring(bufio.NewReader(strings.NewReader(in)), MaxRequest)
		if err == nil && !strings.HasPrefix(in, string(AppendNetstring(nil, s))) {
			t.Fatalf("%q read as %q", in, s)
		}
	})
}

func TestServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "m.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: slog.New(slog.DiscardHandler), RequestTimeout: time.Second, Handler: func(ctx context.Context, name, key string) (Result, error) {
		switch key {
		case "blocked@x":
			return Result{Found: true, Value: "REJECT blocked"}, nil
		case "down@x":
			return Result{}, errors.New("store\ndown")
		}
		return Result{}, nil
	}}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for req, want := range map[string]string{
		"blocked blocked@x": "OK REJECT blocked",
		"blocked fine@x":    "NOTFOUND ",
		"blocked down@x":    "TEMP store down",
		"nospace":           "PERM malformed request",
	} {
		c.Write(AppendNetstring(nil, req))
		got, err := ReadNetstring(r, 1000)
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", req, got, err, want)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with an idle connection: %v", err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("connection still open after shutdown: %v", err)
	}
}

type counter struct{ n atomic.Int64 }

func (c *counter) Inc() { c.n.Add(1) }

// A panic in the handler ends that connection without a reply and is
// counted; the server goes on answering.
func TestHandlerPanic(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "m.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	panics := &counter{}
	s := &Server{Log: slog.New(slog.DiscardHandler), Panics: panics, Handler: func(ctx context.Context, name, key string) (Result, error) {
		if key == "boom" {
			panic("handler bug")
		}
		return Result{}, nil
	}}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	ask := func(req string) (string, error) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(AppendNetstring(nil, req)); err != nil {
			t.Fatal(err)
		}
		return ReadNetstring(bufio.NewReader(c), 1000)
	}
	if got, err := ask("blocked boom"); err == nil {
		t.Errorf("reply %q from a handler that panicked", got)
	}
	if got, err := ask("blocked fine"); got != "NOTFOUND " {
		t.Errorf("after a panic: %q %v", got, err)
	}
	if n := panics.n.Load(); n != 1 {
		t.Errorf("panics counted: %d, want 1", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
