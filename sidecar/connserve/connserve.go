// Package connserve runs the accept loop, connection tracking and graceful
// drain for the daemons' request/response protocols on local sockets (the
// Dovecot dict protocol, Postfix's socketmap), so each protocol package only
// reads requests and writes replies.
package connserve

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Server tracks listeners and connections. The zero value is ready to use.
type Server struct {
	Log *slog.Logger

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
				s.Log.Warn("accept failed, retrying", "err", err, "delay", delay)
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
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				s.wg.Done()
			}()
			handle(c)
		}()
	}
}

// Shutdown stops accepting, lets every busy connection finish its request,
// closes the connections, and waits for that or for ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.lns {
		ln.Close()
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
		return ctx.Err()
	}
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

func (c *Conn) wakeIfIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.busy {
		c.SetReadDeadline(time.Now())
	}
}

// AwaitRequest prepares a read of the next request: it sets the idle
// deadline, and reports false if the server is shutting down, in which case
// the handler returns. Checked after setting the deadline, so a Shutdown
// from then on wakes the read up.
func (c *Conn) AwaitRequest(idle time.Duration) bool {
	if idle > 0 {
		c.SetReadDeadline(time.Now().Add(idle))
	}
	return !c.srv.Closing()
}
