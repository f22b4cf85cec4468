package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"chatmail.dev/sidecar/connserve"
)

// notifySocket listens where NOTIFY_SOCKET points, as systemd does.
func notifySocket(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	t.Setenv("NOTIFY_SOCKET", name)
	return c
}

func receive(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 256)
	n, err := c.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

func TestNotify(t *testing.T) {
	for _, name := range []string{filepath.Join(t.TempDir(), "notify"), fmt.Sprintf("@chatmail-test-%d", os.Getpid())} {
		c := notifySocket(t, name)
		if err := Notify("READY=1"); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := receive(t, c); got != "READY=1" {
			t.Errorf("%s: got %q", name, got)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	if err := Notify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if err := Notify("READY=1"); err == nil {
		t.Error("an unsupported NOTIFY_SOCKET went unnoticed")
	}
}

// echo is a connserve server that answers each line with itself.
type echo struct{ conns connserve.Server }

func (e *echo) Serve(ln net.Listener) error {
	return e.conns.Serve(ln, func(c *connserve.Conn) {
		r := bufio.NewReader(c)
		for c.AwaitRequest(time.Minute) {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := c.Write([]byte(line)); err != nil {
				return
			}
		}
	})
}

func (e *echo) Shutdown(ctx context.Context) error { return e.conns.Shutdown(ctx) }

// The daemon tells systemd READY=1 once its servers listen, and
// STOPPING=1 at SIGTERM, before it drains.
func TestReadyAndStopping(t *testing.T) {
	notify := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	sock := filepath.Join(t.TempDir(), "echo.sock")
	code := make(chan int, 1)
	go func() {
		code <- run(spec(&section{}, func(ctx context.Context, env *Env, _ *section) error {
			ln, err := net.Listen("unix", sock)
			if err != nil {
				return err
			}
			return env.Serve(ctx, On(&echo{}, ln))
		}), writeConfig(t, good))
	}()
	if got := receive(t, notify); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	// Ready means served.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("READY=1 before the socket listens: %v", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(c).ReadString('\n'); line != "ping\n" {
		t.Fatalf("echo: %q %v", line, err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := receive(t, notify); got != "STOPPING=1" {
		t.Errorf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	select {
	case c := <-code:
		if c != ExitOK {
			t.Errorf("exit %d after SIGTERM", c)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}

// stuck never finishes a request: its Shutdown waits for ctx.
type stuck struct{ stop chan struct{} }

func (s *stuck) Serve(net.Listener) error { <-s.stop; return connserve.ErrServerClosed }

func (s *stuck) Shutdown(ctx context.Context) error {
	close(s.stop)
	<-ctx.Done()
	return ctx.Err()
}

// Serve shuts its servers down within the servers' share of the drain
// budget, and says so when they did not finish.
func TestServeDrainBudget(t *testing.T) {
	env := &Env{Log: slog.New(slog.DiscardHandler), DrainTimeout: 3 * time.Second}
	if got, want := env.ShutdownTimeout(), time.Second+500*time.Millisecond; got != want {
		t.Fatalf("ShutdownTimeout %v, want %v (half of a budget under twice ExitMargin)", got, want)
	}
	env.DrainTimeout = 10 * time.Second
	if got, want := env.ShutdownTimeout(), 8*time.Second; got != want {
		t.Fatalf("ShutdownTimeout %v, want %v", got, want)
	}
	env.DrainTimeout = time.Second
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // SIGTERM already came
	start := time.Now()
	err = env.Serve(ctx, On(&stuck{stop: make(chan struct{})}, ln))
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Serve with a server that did not drain: %v", err)
	}
	if took < env.ShutdownTimeout() || took > env.ShutdownTimeout()+time.Second {
		t.Errorf("drain took %v, budget %v", took, env.ShutdownTimeout())
	}
}
