package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func TestWatchdogInterval(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, c := range []struct {
		usec, pid string
		want      time.Duration
		bad       bool
	}{
		{"", "", 0, false},
		{"10000000", "", 5 * time.Second, false},
		{"10000000", me, 5 * time.Second, false},
		{"10000000", "1", 0, false}, // another process's watchdog
		{"1", "", time.Microsecond, false},
		{"0", "", 0, true},
		{"-5", "", 0, true},
		{"10s", "", 0, true},
		{"10000000", "x", 0, true},
	} {
		t.Setenv("WATCHDOG_USEC", c.usec)
		t.Setenv("WATCHDOG_PID", c.pid)
		got, err := WatchdogInterval()
		if got != c.want || (err != nil) != c.bad {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v %v, want %v (error %v)", c.usec, c.pid, got, err, c.want, c.bad)
		}
	}
}

// silent fails unless nothing arrives on c for d.
func silent(t *testing.T, c *net.UnixConn, d time.Duration) {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	n, err := c.Read(b)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("got %q %v, want nothing", b[:n], err)
	}
}

// Pings every half of WATCHDOG_USEC, and none after ctx ends.
func TestWatchdog(t *testing.T) {
	notify := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Watchdog(ctx, slog.New(slog.DiscardHandler)); close(done) }()
	var at []time.Time
	for range 4 {
		if got := receive(t, notify); got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
		at = append(at, time.Now())
	}
	// The first ping is at once; then every 50 ms.
	if gap := at[3].Sub(at[1]) / 2; gap < 40*time.Millisecond || gap > 500*time.Millisecond {
		t.Errorf("pings %v apart, want about 50ms", gap)
	}
	cancel()
	<-done
	if err := notify.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	for { // what was sent before the end
		if _, err := notify.Read(make([]byte, 64)); err != nil {
			break
		}
	}
	silent(t, notify, 200*time.Millisecond)
}

// No pings for another process's watchdog, nor without one.
func TestWatchdogNotOurs(t *testing.T) {
	notify := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	for _, pid := range []string{"1", "nonsense"} {
		t.Setenv("WATCHDOG_USEC", "20000")
		t.Setenv("WATCHDOG_PID", pid)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		Watchdog(ctx, slog.New(slog.DiscardHandler))
		cancel()
		silent(t, notify, 50*time.Millisecond)
	}
	t.Setenv("WATCHDOG_USEC", "")
	t.Setenv("WATCHDOG_PID", "")
	Watchdog(context.Background(), slog.New(slog.DiscardHandler)) // returns at once
	silent(t, notify, 50*time.Millisecond)
}

// Every daemon pings from Main while it runs, and stops when it exits.
func TestRunPingsWatchdog(t *testing.T) {
	notify := notifySocket(t, filepath.Join(t.TempDir(), "notify"))
	t.Setenv("WATCHDOG_USEC", "40000")
	t.Setenv("WATCHDOG_PID", "")
	pinged := make(chan struct{})
	code := make(chan int, 1)
	go func() {
		code <- run(spec(&section{}, func(ctx context.Context, env *Env, _ *section) error {
			<-pinged
			return nil
		}), writeConfig(t, good))
	}()
	for range 3 {
		if got := receive(t, notify); got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}
	close(pinged)
	if c := <-code; c != ExitOK {
		t.Fatalf("exit %d", c)
	}
	if err := notify.SetReadDeadline(time.Now().Add(10 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := notify.Read(make([]byte, 64)); err != nil {
			break
		}
	}
	silent(t, notify, 150*time.Millisecond)
}
