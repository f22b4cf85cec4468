package connserve

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"chatmail.dev/sidecar/logging/logtest"
)

// A request in progress finishes and is answered during Shutdown; an idle
// connection is woken up and closed.
func TestShutdownDrains(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: slog.New(slog.DiscardHandler)}
	started := make(chan struct{}, 2)
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(ln, func(c *Conn) {
			r := bufio.NewReader(c)
			for c.AwaitRequest(time.Minute) {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				c.Busy(true)
				started <- struct{}{}
				time.Sleep(200 * time.Millisecond) // a slow request
				c.Write([]byte("done " + line))
				c.Busy(false)
			}
		})
	}()
	busy, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy.Write([]byte("work\n"))
	<-started

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	busy.SetReadDeadline(time.Now().Add(time.Second))
	if reply, err := bufio.NewReader(busy).ReadString('\n'); reply != "done work\n" {
		t.Errorf("request in progress at shutdown: reply %q, %v", reply, err)
	}
	idle.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("idle connection still open after Shutdown")
	}
}

type counter struct{ n atomic.Int64 }

func (c *counter) Inc() { c.n.Add(1) }

// A handler that panics is recovered and counted, its connection is
// closed, and the server goes on serving other connections. The panic is
// logged, and under No-Log its value names no one even when it quotes
// what the handler was given.
func TestPanicRecovered(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	panics := &counter{}
	log, _, out := logtest.New(true)
	s := &Server{Log: log, Panics: panics}
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(ln, func(c *Conn) {
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			if line == "panic\n" {
				panic(fmt.Errorf("handler bug on %q from %s about <%s>", "alice@chat.example", "192.0.2.1", "m1.x@chat.example"))
			}
			if _, err := c.Write([]byte("ok\n")); err != nil {
				t.Error(err)
			}
		})
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	ask := func(req string) (string, error) {
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
		return bufio.NewReader(c).ReadString('\n')
	}
	for range 3 {
		if reply, err := ask("panic\n"); err == nil {
			t.Fatalf("panicking handler: reply %q, want the connection closed", reply)
		} else if !errors.Is(err, io.EOF) && !isReset(err) {
			t.Fatalf("panicking handler: %v, want the connection closed", err)
		}
		if reply, err := ask("work\n"); reply != "ok\n" {
			t.Fatalf("after a panic: reply %q, %v", reply, err)
		}
	}
	if n := panics.n.Load(); n != 3 {
		t.Errorf("panics counted: %d, want 3", n)
	}
	if n := strings.Count(out.String(), "handler bug on"); n != 3 {
		t.Errorf("%d panics logged, want 3:\n%s", n, out)
	}
	if leaks := logtest.Leaks(out.String(), "alice@chat.example", "192.0.2.1", "m1.x@chat.example"); len(leaks) > 0 {
		t.Errorf("under No-Log the panic's log names %q:\n%s", leaks, out)
	}
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

// A request that outlives the drain budget does not hold Shutdown up:
// Shutdown returns at the deadline with its error, closes the connection,
// and the handler ends.
func TestShutdownBudget(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: slog.New(slog.DiscardHandler)}
	started := make(chan struct{})
	ended := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(ln, func(c *Conn) {
			defer close(ended)
			if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
				return
			}
			c.Busy(true)
			close(started)
			// Stuck until the connection is closed under it.
			_, _ = io.Copy(io.Discard, c)
		})
	}()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("stuck\n")); err != nil {
		t.Fatal(err)
	}
	<-started
	const budget = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	start := time.Now()
	err = s.Shutdown(ctx)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown past its budget: %v, want the context's error", err)
	}
	if took < budget || took > budget+time.Second {
		t.Errorf("Shutdown took %v with a budget of %v", took, budget)
	}
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the stuck handler did not end after Shutdown closed its connection")
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
}
