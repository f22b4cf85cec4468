package sink

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/logd/masking"
)

// Long lines fill the queue by bytes long before they fill it by count:
// what is beyond queue_bytes is dropped as queue_full, and once the writer
// has taken them the room is back.
func TestQueueBoundedByBytes(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(1000, 10*1000, m, flag(false))
	line := "Nov 29 14:10:12 mx postfix/smtpd[1]: warning: " + strings.Repeat("x", 1000-46)
	if len(line) != 1000 {
		t.Fatal(len(line))
	}
	for range 50 {
		q.offer(masking.Postfix, line)
	}
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonQueueFull)); got != 40 {
		t.Fatalf("dropped %v, want 40", got)
	}
	if len(q.ch) != 10 || q.bytes.Load() != 10*1000 {
		t.Fatalf("queued %d lines, %d bytes", len(q.ch), q.bytes.Load())
	}
	out := &memOut{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { WriteLoop(ctx, q, out); close(done) }()
	waitFor(t, "the queue written", func() bool { return len(out.get()) == 10 })
	waitFor(t, "the bytes given back", func() bool { return q.bytes.Load() == 0 })
	for range 5 {
		q.offer(masking.Postfix, line)
	}
	waitFor(t, "room again", func() bool { return len(out.get()) == 15 })
	cancel()
	<-done
	if got := testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonQueueFull)); got != 40 {
		t.Fatalf("dropped %v after the writer ran, want 40", got)
	}
}
