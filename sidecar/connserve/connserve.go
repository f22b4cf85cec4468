// Package connserve runs the accept loop, connection tracking, panic
// recovery and graceful drain of every protocol server of the daemons (the
// Dovecot dict protocol, Postfix's socketmap, the milter protocol), so each
// protocol package only reads requests and writes replies.
package connserve

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Counter counts events; a prometheus.Counter is one.
type Counter interface{ Inc() }

// Server tracks listeners and connections. The zero value is ready to use.
type Server struct {
	Log *slog.Logger
	// Panics, if set, counts the panics recovered in handlers
	// (chatmail_<daemon>_panics_total).
	Panics Counter

	mu      sync.Mutex
	lns     map[net.Listener]struct{}
	conns   map[*Conn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// Conn is one tracked connection. Its handler marks the time between
// reading a request and writing its reply with Busy, so that Shutdown lets
// that request finish and wakes up only connections that wait for input.
type Conn struct {
	net.Conn
	srv  *Server
	mu   sync.Mutex
	busy bool
}

// Serve accepts connections on ln and runs handle for each in its own
// goroutine until Shutdown; handle must return when the connection ends.
// A panic in handle is logged and counted, and closes that connection
// only: the server goes on serving the others.
func (s *Server) Serve(ln net.Listener, handle func(*Conn)) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	if s.lns == nil {
		s.lns = map[net.Listener]struct{}{}
		s.conns = map[*Conn]struct{}{}
	}
	s.lns[ln] = struct{}{}
	s.mu.Unlock()

	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.Closing() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of file descriptors or similar: back off, keep serving.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log().Warn("accept failed, retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c := &Conn{Conn: nc, srv: s}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = nc.Close() // never served: nothing to report
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.run(c, handle)
	}
}

// run serves one connection and forgets it when handle returns or panics.
func (s *Server) run(c *Conn, handle func(*Conn)) {
	defer func() {
		if p := recover(); p != nil {
			s.Recovered(p)
		}
		_ = c.Close() // the handler may have closed it already
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	handle(c)
}

// Recovered logs and counts a panic recovered while serving. Protocol
// packages that recover panics themselves, to answer the peer, report them
// here too.
func (s *Server) Recovered(p any) {
	s.log().Error("panic while serving a connection", "panic", p, "stack", string(debug.Stack()))
	if s.Panics != nil {
		s.Panics.Inc()
	}
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// Shutdown stops accepting, lets every busy connection finish its request,
// closes the connections, and waits for that. When ctx ends first it
// closes the connections still open, busy or not, and returns ctx.Err():
// the peers (Postfix, Dovecot) see a failure they retry, and the handlers
// end.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.lns {
		_ = ln.Close() // Serve returns ErrServerClosed whatever Close says
	}
	for c := range s.conns {
		c.wakeIfIdle()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Conn.Close() // out of budget: the peer retries elsewhere
	}
	s.mu.Unlock()
	return ctx.Err()
}

// Closing reports whether Shutdown has begun.
func (s *Server) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Busy marks the connection as working on a request (true) or waiting for
// the next one (false).
func (c *Conn) Busy(b bool) {
	c.mu.Lock()
	c.busy = b
	c.mu.Unlock()
}

// IsBusy reports what Busy last set.
func (c *Conn) IsBusy() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.busy
}

// Closing reports whether the server has begun to shut down.
func (c *Conn) Closing() bool { return c.srv.Closing() }

// Wake interrupts a read blocked on the connection (it sets the read
// deadline to now), so that a handler between requests sees the server
// closing.
func (c *Conn) Wake() { _ = c.SetReadDeadline(time.Now()) }

func (c *Conn) wakeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.busy {
		c.Wake()
	}
}

// AwaitRequest prepares a read of the next request: it sets the idle
// deadline, and reports false if the server is shutting down, in which case
// the handler returns. Checked after setting the deadline, so a Shutdown
// from then on wakes the read up.
func (c *Conn) AwaitRequest(idle time.Duration) bool {
	if idle > 0 {
		_ = c.SetReadDeadline(time.Now().Add(idle))
	}
	return !c.srv.Closing()
}
