// Package sink receives the log datagrams of Postfix and Dovecot without ever
// blocking them, applies the No-Log rules (package masking) and writes what
// remains to a file.
//
// The shape is chosen for the failure directions (see issue 10): each socket
// has a read loop that does nothing but read a datagram, copy it and offer it
// to a bounded queue; when the queue is full the datagram is dropped and
// counted, so a slow or stuck writer never backs up into the kernel's
// datagram queue, where Postfix, which logs with blocking sends, would stall.
// One writer goroutine parses, masks and writes, in batches: it lets the
// lines of up to FlushDelay gather and writes them with one write(2). How
// much a burst can wait in the kernel is not the receive buffer's
// business: Linux bounds a unix
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
	"time"
	"unsafe"

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
	// s is the datagram, copied once out of the read buffer: a string,
	// so that masking.ParseString takes it without another copy.
	s string
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
	// kick ends the writer's wait early when the queue is half full.
	kick chan struct{}
	// flushDelay is FlushDelay; tests change it.
	flushDelay time.Duration
}

// NewQueue returns a queue of at most n datagrams and maxBytes bytes of
// them, following the switch nolog.
func NewQueue(n int, maxBytes int64, m *Metrics, nolog NoLog) *Queue {
	return &Queue{ch: make(chan item, n), m: m, nolog: nolog, dropped: m.Dropped.WithLabelValues(ReasonQueueFull), maxBytes: maxBytes, kick: make(chan struct{}, 1), flushDelay: FlushDelay}
}

// offer never blocks. s must not change after (a string, or a copy).
func (q *Queue) offer(src masking.Source, s string) {
	q.m.Received.Inc()
	size := int64(len(s))
	b := q.bytes.Add(size)
	if b > q.maxBytes {
		q.bytes.Add(-size)
		q.dropped.Inc()
		return
	}
	select {
	case q.ch <- item{src, s, q.nolog.On()}:
	default:
		q.bytes.Add(-size)
		q.dropped.Inc()
		return
	}
	if q.halfFull(b) {
		select {
		case q.kick <- struct{}{}:
		default: // a kick is pending already
		}
	}
}

// halfFull: the writer should stop waiting (FlushDelay) and write now, so
// that a burst finds room.
func (q *Queue) halfFull(bytes int64) bool {
	return 2*len(q.ch) >= cap(q.ch) || 2*bytes >= q.maxBytes
}

// take is the writer's end of offer.
func (q *Queue) take(it item) {
	q.bytes.Add(-int64(len(it.s)))
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
//
// It reads with a raw recvfrom(2), MSG_DONTWAIT, which cannot block, and
// waits in Go's network poller when there is nothing. Not c.Read: the
// runtime's entry into a syscall wakes its monitor thread (sysmon) when the
// process was idle, so each datagram of a trickle cost two or three thread
// switches more than its own wakeup, most of logd's CPU per line
// (BenchmarkPipeline: about 4.5 switches and 55 µs a line before, 1.1 and
// 20 µs after, with the batching of WriteLoop).
func ReadLoop(c *net.UnixConn, src masking.Source, q *Queue) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, MaxDatagram)
	var (
		n     int
		errno syscall.Errno
	)
	recv := func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), syscall.MSG_DONTWAIT, 0, 0)
		n, errno = int(r), e
		return e != syscall.EAGAIN // else wait in the poller
	}
	for {
		if err := rc.Read(recv); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		switch {
		case errno == syscall.EINTR:
			// A datagram socket has no per-peer failures worth stopping for.
		case errno != 0:
			return errno
		case n > 0:
			// One allocation, a string: the writer parses it without a copy.
			q.offer(src, string(buf[:n]))
		}
	}
}

// Output is where the writer puts lines: a *File, or any writer in tests.
type Output interface {
	WriteLine(line string) error
	// Flush is called when the writer has written what was queued.
	Flush() error
}

// NoLog tells whether No-Log is on; *logging.NoLog implements it.
type NoLog interface{ On() bool }

// FlushDelay is how long the writer lets lines gather after the first one
// of a quiet spell before it writes them all with one write(2): a line is
// on disk at most FlushDelay (and the time to write what is queued before
// it) after it was read. Without it every line of a trickle costs a wakeup
// of the writer and a write(2) of its own (and the syscall wakes sysmon,
// see ReadLoop). The writer does not wait when the queue is half full (by
// count or bytes) or logd stops.
const FlushDelay = 100 * time.Millisecond

// WriteLoop takes datagrams from q, applies the No-Log rules and writes to
// out until ctx ends; then it writes what is still queued and returns.
// The mode of a line is the stricter of the modes when it was read and when
// it is written: switching No-Log on masks what is still queued, switching
// it off unmasks nothing that came while it was on.
func WriteLoop(ctx context.Context, q *Queue, out Output) {
	writeErr := q.m.Dropped.WithLabelValues(ReasonWriteError)
	nologDrop := q.m.Dropped.WithLabelValues(ReasonNoLog)
	handle := func(it item) {
		q.take(it)
		// Apply decides a drop under No-Log before any masking; with
		// No-Log off it only strips passwords (masking.Secrets).
		line, keep, masked := masking.Apply(masking.ParseString(it.src, it.s), it.nolog || q.nolog.On())
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
	// drain writes what is queued and flushes.
	drain := func() {
		for {
			select {
			case it := <-q.ch:
				handle(it)
			default:
				_ = out.Flush() // a failed flush shows in the next write
				return
			}
		}
	}
	wait := time.NewTimer(q.flushDelay)
	wait.Stop()
	for {
		select {
		case <-ctx.Done():
			drain()
			return
		case it := <-q.ch:
			handle(it)
		}
		select {
		case <-q.kick: // stale: the queue is checked below
		default:
		}
		if !q.halfFull(q.bytes.Load()) {
			wait.Reset(q.flushDelay)
			select {
			case <-ctx.Done():
			case <-wait.C:
			case <-q.kick:
			}
			wait.Stop()
		}
		drain()
	}
}
