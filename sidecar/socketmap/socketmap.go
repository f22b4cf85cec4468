// Package socketmap serves Postfix's socketmap lookup table protocol
// (socketmap_table(5)): each request is a netstring "name key", each reply a
// netstring "OK value", "NOTFOUND ", "TEMP reason" or "PERM reason".
//
// It sits beside dict as the other lookup protocol a daemon serves to the
// MTA: doveauth serves it so that Postfix can ask, for every message,
// whether the authenticated sender is blocked (check_sasl_access), which an
// open SMTP session would otherwise never learn.
package socketmap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"chatmail.dev/sidecar/connserve"
)

// MaxRequest bounds a request; Postfix's names and keys are short.
const MaxRequest = 10000

// Result is a lookup's answer.
type Result struct {
	Found bool
	Value string
}

// Handler answers lookups. An error becomes a TEMP reply: Postfix then
// defers, it never takes "not found" for an answer it did not get.
type Handler func(ctx context.Context, name, key string) (Result, error)

// Server serves the protocol on one or more listeners.
type Server struct {
	Handler        Handler
	Log            *slog.Logger
	RequestTimeout time.Duration
	IdleTimeout    time.Duration
	// Panics, if set, counts the panics recovered in the handler; the
	// connection ends, the server goes on.
	Panics connserve.Counter

	conns connserve.Server
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = connserve.ErrServerClosed

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.conns.Log, s.conns.Panics = s.Log, s.Panics
	return s.conns.Serve(ln, s.serveConn)
}

// Shutdown stops accepting, lets requests in progress finish, and closes
// every connection; Postfix reconnects to whoever serves the socket next.
func (s *Server) Shutdown(ctx context.Context) error { return s.conns.Shutdown(ctx) }

func (s *Server) serveConn(c *connserve.Conn) {
	r := bufio.NewReader(c)
	for r.Buffered() > 0 || c.AwaitRequest(s.IdleTimeout) {
		req, err := ReadNetstring(r, MaxRequest)
		if err != nil {
			if !errors.Is(err, io.EOF) && !s.conns.Closing() {
				s.Log.Debug("socketmap: closing connection", "err", err)
			}
			return
		}
		c.Busy(true)
		reply := AppendNetstring(nil, s.answer(req))
		c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Write(reply)
		c.Busy(false)
		if err != nil {
			return
		}
	}
}

func (s *Server) answer(req string) string {
	name, key, ok := strings.Cut(req, " ")
	if !ok || name == "" {
		return "PERM malformed request"
	}
	ctx, cancel := context.WithCancel(context.Background())
	if s.RequestTimeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), s.RequestTimeout)
	}
	defer cancel()
	res, err := s.Handler(ctx, name, key)
	switch {
	case err != nil:
		return "TEMP " + oneLine(err.Error())
	case res.Found:
		return "OK " + oneLine(res.Value)
	}
	return "NOTFOUND "
}

func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }

// ErrNetstring reports a malformed or oversized netstring.
var ErrNetstring = errors.New("socketmap: malformed netstring")

// ReadNetstring reads one netstring "<len>:<data>," of at most max bytes.
func ReadNetstring(r *bufio.Reader, max int) (string, error) {
	var n int
	for digits := 0; ; digits++ {
		b, err := r.ReadByte()
		if err != nil {
			if digits > 0 && errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", err
		}
		if b == ':' && digits > 0 {
			break
		}
		// Digits only, and no leading zero: a netstring's length is canonical.
		if b < '0' || b > '9' || digits >= len(strconv.Itoa(max)) || digits == 1 && n == 0 {
			return "", ErrNetstring
		}
		n = n*10 + int(b-'0')
	}
	if n > max {
		return "", fmt.Errorf("%w: %d bytes", ErrNetstring, n)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", err
	}
	if buf[n] != ',' {
		return "", ErrNetstring
	}
	return string(buf[:n]), nil
}

// AppendNetstring appends s as a netstring to b.
func AppendNetstring(b []byte, s string) []byte {
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, ':')
	b = append(b, s...)
	return append(b, ',')
}
