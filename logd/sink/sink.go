// Package sink receives the log datagrams of Postfix and Dovecot without ever
// blocking them, applies the No-Log rules (package masking) and writes what
// remains to a file.
//
// The shape is chosen for the failure directions (see issue 10): each socket
// has a read loop that does nothing but read a datagram, copy it and offer it
// to a bounded queue; when the queue is full the datagram is dropped and
// counted, so a slow or stuck writer never backs up into the kernel's
// datagram queue, where Postfix, which logs with blocking sends, would stall.
// One writer goroutine parses, masks and writes. How much a burst can wait
// in the kernel is not the receive buffer's business: Linux bounds a unix
// datagram socket's queue by net.unix.max_dgram_qlen and charges each
// datagram to its sender's send buffer (measured in
// deploy/sysctl.d/90-chatmail-logd.conf).
package sink

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/logd/masking"
)

// MaxDatagram is the largest datagram read; longer ones are cut (Postfix
// cuts its lines at about 2000 bytes).
const MaxDatagram = 16 * 1024

// Drop reasons, the values of the reason label.
const (
	ReasonQueueFull  = "queue_full"
	ReasonNoLog      = "nolog"
	ReasonWriteError = "write_error"
)

// Metrics are logd's series. No label names a user, an address or a peer.
type Metrics struct {
	Received prometheus.Counter
	Written  prometheus.Counter
	Dropped  *prometheus.CounterVec
	Masked   prometheus.Counter
}

// NewMetrics registers the series on reg, every label value at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_logd_lines_received_total",
			Help: "Log datagrams read from the sockets.",
		}),
		Written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_logd_lines_written_total",
			Help: "Lines written to the output.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_logd_lines_dropped_total",
			Help: "Lines not written: queue_full (the writer fell behind: the queue held queue_length lines or queue_bytes bytes), nolog (a user action under No-Log), write_error.",
		}, []string{"reason"}),
		Masked: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_logd_lines_masked_total",
			Help: "Lines written with identities masked under No-Log.",
		}),
	}
	reg.MustRegister(m.Received, m.Written, m.Dropped, m.Masked)
	for _, r := range []string{ReasonQueueFull, ReasonNoLog, ReasonWriteError} {
		m.Dropped.WithLabelValues(r)
	}
	return m
}

type item struct {
	src masking.Source
	b   []byte
	// nolog is the mode when the datagram was read: a line that came
	// under No-Log is treated as such even if No-Log is off when it is
	// written.
	nolog bool
}

// Queue is the bounded queue between the read loops and the writer, and
// the No-Log switch both ends consult.
type Queue struct {
	ch      chan item
	m       *Metrics
	nolog   NoLog
	dropped prometheus.Counter
	// bytes is what the queued datagrams hold, at most maxBytes: a queue
	// of n long lines would otherwise take n*MaxDatagram.
	bytes    atomic.Int64
	maxBytes int64
}

// NewQueue returns a queue of at most n datagrams and maxBytes bytes of
// them, following the switch nolog.
func NewQueue(n int, maxBytes int64, m *Metrics, nolog NoLog) *Queue {
	return &Queue{ch: make(chan item, n), m: m, nolog: nolog, dropped: m.Dropped.WithLabelValues(ReasonQueueFull), maxBytes: maxBytes}
}

// offer never blocks.
func (q *Queue) offer(src masking.Source, b []byte) {
	q.m.Received.Inc()
	size := int64(len(b))
	if q.bytes.Add(size) > q.maxBytes {
		q.bytes.Add(-size)
		q.dropped.Inc()
		return
	}
	select {
	case q.ch <- item{src, b, q.nolog.On()}:
	default:
		q.bytes.Add(-size)
		q.dropped.Inc()
	}
}

// take is the writer's end of offer.
func (q *Queue) take(it item) item {
	q.bytes.Add(-int64(len(it.b)))
	return it
}

// Listen binds a unixgram socket at path with mode (0666: every Postfix
// process and Dovecot's log process send to it) and asks for a receive
// buffer of rcvbuf bytes (harmless; Linux does not limit unix datagrams by
// it). A stale socket is replaced; any other file at path is an error.
func Listen(path string, mode fs.FileMode, rcvbuf int) (*net.UnixConn, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		// A datagram socket cannot tell a live peer from a stale file the
		// way a stream socket can; the unit owns the path, so replace it.
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		c.Close()
		return nil, err
	}
	if rcvbuf > 0 {
		if err := c.SetReadBuffer(rcvbuf); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// ReadLoop reads datagrams from c into q until c is closed. It does nothing
// else, so that the sockets are drained as fast as the kernel delivers.
func ReadLoop(c *net.UnixConn, src masking.Source, q *Queue) error {
	buf := make([]byte, MaxDatagram)
	for {
		n, err := c.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// A datagram socket has no per-peer failures worth stopping for.
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return err
		}
		if n == 0 {
			continue
		}
		q.offer(src, append([]byte(nil), buf[:n]...))
	}
}

// Output is where the writer puts lines: a *File, or any writer in tests.
type Output interface {
	WriteLine(line string) error
	// Flush is called when the queue is empty.
	Flush() error
}

// NoLog tells whether No-Log is on; *logging.NoLog implements it.
type NoLog interface{ On() bool }

// WriteLoop takes datagrams from q, applies the No-Log rules and writes to
// out until ctx ends; then it writes what is still queued and returns.
// The mode of a line is the stricter of the modes when it was read and when
// it is written: switching No-Log on masks what is still queued, switching
// it off unmasks nothing that came while it was on.
func WriteLoop(ctx context.Context, q *Queue, out Output) {
	writeErr := q.m.Dropped.WithLabelValues(ReasonWriteError)
	nologDrop := q.m.Dropped.WithLabelValues(ReasonNoLog)
	handle := func(it item) {
		line, keep, masked := masking.Apply(masking.Parse(it.src, it.b), it.nolog || q.nolog.On())
		if !keep {
			nologDrop.Inc()
			return
		}
		if err := out.WriteLine(line); err != nil {
			writeErr.Inc()
			return
		}
		q.m.Written.Inc()
		if masked {
			q.m.Masked.Inc()
		}
	}
	for {
		select {
		case <-ctx.Done():
			for {
				select {
				case it := <-q.ch:
					handle(q.take(it))
				default:
					_ = out.Flush()
					return
				}
			}
		case it := <-q.ch:
			handle(q.take(it))
			if len(q.ch) == 0 {
				_ = out.Flush() // a failed flush shows in the next write
			}
		}
	}
}
