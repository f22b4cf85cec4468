package sink

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/logd/masking"
)

// countOut counts flushes.
type countOut struct {
	memOut
	mu      sync.Mutex
	flushes int
}

func (o *countOut) Flush() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushes++
	return nil
}

func (o *countOut) nflush() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.flushes
}

const batchLine = "Nov 29 14:10:12 mx postfix/smtpd[1]: connect from localhost[127.0.0.1]"

// A trickle is written in batches: lines that come within FlushDelay of
// the first are written together, with one flush, not one each.
func TestTrickleIsBatched(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(1000, 16<<20, m, flag(false))
	out := &countOut{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { WriteLoop(ctx, q, out); close(done) }()
	defer func() { cancel(); <-done }()
	for range 10 {
		q.offer(masking.Postfix, batchLine)
		time.Sleep(time.Millisecond)
	}
	waitFor(t, "10 lines written", func() bool { return len(out.get()) == 10 && out.nflush() > 0 })
	// 10 ms of lines against a FlushDelay of 100 ms: one batch, two on a
	// slow machine, never a flush a line.
	if n := out.nflush(); n > 3 {
		t.Fatalf("%d flushes for 10 lines", n)
	}
}

// A lone line is on disk within FlushDelay, without more traffic.
func TestLoneLineFlushed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "mail.log")
	f, err := OpenFile(p, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(1000, 16<<20, m, flag(false))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { WriteLoop(ctx, q, f); close(done) }()
	defer func() { cancel(); <-done }()
	start := time.Now()
	q.offer(masking.Postfix, batchLine)
	waitFor(t, "the line on disk", func() bool {
		b, _ := os.ReadFile(p)
		return string(b) == batchLine+"\n"
	})
	if d := time.Since(start); d < FlushDelay/2 || d > 10*FlushDelay {
		t.Fatalf("written after %v, FlushDelay is %v", d, FlushDelay)
	}
}

// The writer does not wait out FlushDelay when the queue is half full (a
// burst must find room), nor at exit.
func TestHalfFullAndExitDoNotWait(t *testing.T) {
	for _, bybytes := range []bool{false, true} {
		m := NewMetrics(prometheus.NewRegistry())
		q := NewQueue(10, 16<<20, m, flag(false))
		if bybytes {
			q = NewQueue(1000, int64(10*len(batchLine)), m, flag(false))
		}
		q.flushDelay = time.Hour
		out := &countOut{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { WriteLoop(ctx, q, out); close(done) }()
		q.offer(masking.Postfix, batchLine) // the writer takes it and waits
		waitFor(t, "the first line", func() bool { return len(out.get()) == 1 })
		for range 4 {
			q.offer(masking.Postfix, batchLine)
		}
		time.Sleep(50 * time.Millisecond)
		if n := len(out.get()); n != 1 {
			t.Fatalf("bybytes=%v: %d lines written below half full", bybytes, n)
		}
		q.offer(masking.Postfix, batchLine) // 5 of 10: half full
		waitFor(t, "the half-full queue written", func() bool { return len(out.get()) == 6 && out.nflush() == 1 })
		q.offer(masking.Postfix, strings.Replace(batchLine, "connect", "disconnect", 1))
		waitFor(t, "the next line taken", func() bool { return len(out.get()) == 7 })
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the writer waits out its delay at exit")
		}
		if len(out.get()) != 7 || out.nflush() < 2 {
			t.Fatalf("bybytes=%v: %d lines, %d flushes at exit", bybytes, len(out.get()), out.nflush())
		}
	}
}
