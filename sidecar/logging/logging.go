// Package logging sets up log/slog for the daemons, with a No-Log switch that
// can be flipped at runtime.
//
// Under No-Log nothing that says who connected, what they did or which
// messages passed may reach the log: records below Warn are dropped, and in
// the records that remain every attribute that names a user, an address, an
// IP or a message is replaced by "-". Code marks such attributes by using the
// constructors in this package (User, Addr, IP, MsgID) so that the rule lives
// in one place.
package logging

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
)

// Keys of attributes that identify a person or a message.
const (
	KeyUser  = "user"
	KeyAddr  = "addr"
	KeyIP    = "ip"
	KeyMsgID = "msgid"
)

var sensitive = map[string]bool{KeyUser: true, KeyAddr: true, KeyIP: true, KeyMsgID: true}

// User returns an attribute naming an account.
func User(v string) slog.Attr { return slog.String(KeyUser, v) }

// Addr returns an attribute naming a mail address that is not an account.
func Addr(v string) slog.Attr { return slog.String(KeyAddr, v) }

// IP returns an attribute naming a network peer.
func IP(v string) slog.Attr { return slog.String(KeyIP, v) }

// MsgID returns an attribute naming a message.
func MsgID(v string) slog.Attr { return slog.String(KeyMsgID, v) }

// NoLog is the runtime No-Log switch. The zero value is off.
type NoLog struct{ on atomic.Bool }

// On reports whether No-Log is on.
func (n *NoLog) On() bool { return n != nil && n.on.Load() }

// Set switches No-Log on or off.
func (n *NoLog) Set(on bool) { n.on.Store(on) }

// FileOn reports whether the No-Log file at path switches No-Log on: it
// exists, or cannot be checked for another reason than absence (failing
// towards privacy). An empty path is off.
func FileOn(path string) bool {
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return err == nil || !os.IsNotExist(err)
}

// ParseLevel maps a config level name to a slog level.
func ParseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// New returns a logger writing text lines to w at level and above, obeying nolog.
func New(w io.Writer, level slog.Level, nolog *NoLog) *slog.Logger {
	h := slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(&handler{next: h, nolog: nolog})
}

type handler struct {
	next  slog.Handler
	nolog *NoLog
	// ops are the WithAttrs and WithGroup calls in order, kept unredacted so
	// that switching No-Log off restores them; applied per record.
	ops []op
}

type op struct {
	attrs []slog.Attr
	group string
}

func (h *handler) Enabled(ctx context.Context, l slog.Level) bool {
	if h.nolog.On() && l < slog.LevelWarn {
		return false
	}
	return h.next.Enabled(ctx, l)
}

func (h *handler) Handle(ctx context.Context, r slog.Record) error {
	on := h.nolog.On()
	if on && r.Level < slog.LevelWarn {
		return nil
	}
	next := h.next
	for _, o := range h.ops {
		if o.group != "" {
			next = next.WithGroup(o.group)
			continue
		}
		as := make([]slog.Attr, len(o.attrs))
		for i, a := range o.attrs {
			as[i] = redact(a, on)
		}
		next = next.WithAttrs(as)
	}
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redact(a, on))
		return true
	})
	return next.Handle(ctx, out)
}

func redact(a slog.Attr, on bool) slog.Attr {
	if !on {
		return a
	}
	if sensitive[a.Key] {
		return slog.String(a.Key, "-")
	}
	if a.Value.Kind() == slog.KindGroup {
		g := a.Value.Group()
		r := make([]any, len(g))
		for i, x := range g {
			r[i] = redact(x, on)
		}
		return slog.Group(a.Key, r...)
	}
	return a
}

func (h *handler) with(o op) *handler {
	return &handler{next: h.next, nolog: h.nolog, ops: append(append([]op{}, h.ops...), o)}
}

func (h *handler) WithAttrs(as []slog.Attr) slog.Handler { return h.with(op{attrs: as}) }

func (h *handler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(op{group: name})
}
