// Package logging sets up log/slog for the daemons, with a No-Log switch that
// can be flipped at runtime.
//
// Under No-Log nothing that says who connected, what they did or which
// messages passed may reach the log: records below Warn are dropped, and in
// the records that remain every attribute that names a user, an address, an
// IP or a message is replaced by "-". Code marks such attributes by using the
// constructors in this package (User, Addr, IP, MsgID) so that the rule lives
// in one place.
//
// The rules for code that logs, or makes errors that may be logged:
//
//   - An identity (address, user name, IP, message or queue id) goes into a
//     log record only as one of those attributes, never inside the message
//     text or another attribute's value.
//   - An error never carries an identity, nor a Dovecot dict key (a passdb
//     key holds the password). An error is text that leaves the code that
//     made it: it is wrapped, written to Dovecot or Postfix as a failure
//     reason (which they log), printed by a command. Nothing downstream
//     knows which part of it names someone, so it must name no one; where
//     the identity helps, log it beside the error: log.Warn("lookup
//     failed", logging.User(addr), "err", err). Errors of libraries are
//     logged as they come (pgx names the database server of a failed
//     connection and keeps a constraint violation's DETAIL, which quotes
//     the row, out of Error(); a DNS error names the resolver): the scan
//     below catches what they quote.
//   - A password reaches no log and no error in any mode.
//
// Defence in depth: under No-Log the handler also scans every record it
// writes (the message and every value: strings, errors, anything else as
// the text handler would print it, the logger's own With attributes) for
// the shapes of an identity (mail address or message id, IPv4, IPv6) and
// replaces them by "-" (Mask). A forgotten rule above still names no one
// in a No-Log record. The scan costs only records that are written under
// No-Log, warnings and errors, never the hot path of a record below the
// level. It cannot see a queue id, a user name without a domain or a
// password: for those only the rules hold.
//
// Package logtest captures what a logger writes, for tests that drive a
// daemon's real code paths with No-Log on and look for what must not be
// there (doveauth's and the milter's TestNoLogNamesNoOne).
package logging

import (
	"context"
	"encoding"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"os"
	"regexp"
	"strings"
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
	msg := r.Message
	if on {
		msg = Mask(msg)
	}
	out := slog.NewRecord(r.Time, r.Level, msg, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redact(a, on))
		return true
	})
	return next.Handle(ctx, out)
}

// redact applies No-Log to one attribute: an identity attribute is "-",
// and any other value has the shapes of identities masked.
func redact(a slog.Attr, on bool) slog.Attr {
	if !on {
		return a
	}
	if sensitive[a.Key] {
		return slog.String(a.Key, "-")
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		g := v.Group()
		r := make([]any, len(g))
		for i, x := range g {
			r[i] = redact(x, on)
		}
		return slog.Group(a.Key, r...)
	case slog.KindString:
		if m := Mask(v.String()); m != v.String() {
			return slog.String(a.Key, m)
		}
	case slog.KindAny:
		if s, ok := text(v.Any()); ok {
			if m := Mask(s); m != s {
				return slog.String(a.Key, m)
			}
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}

// text is a value as the text handler prints it: errors, panics, anything
// else that may quote what it was given.
func text(x any) (string, bool) {
	switch x := x.(type) {
	case encoding.TextMarshaler:
		b, err := x.MarshalText()
		if err != nil {
			return "", false // printed as the marshalling error
		}
		return string(b), true
	case []byte:
		return string(x), true
	}
	return fmt.Sprintf("%+v", x), true
}

var (
	// A mail address, or a message id (which looks like one): anything
	// around an "@" up to a space, bracket, brace, quote or separator, as
	// chatmail-logd masks the lines of Postfix and Dovecot.
	addrShape = regexp.MustCompile(`[^\s<>()\[\]{},;:"'=]*@[^\s<>()\[\]{},;:"'=]+`)
	// What follows the "@" of a Go module path in a stack trace
	// (".../go-milter@v0.5.0/session.go"): a version, not a domain.
	moduleVersion = regexp.MustCompile(`^@v\d+\.\d+\.\d+(?:[-+/]|$)`)
	ipv4Shape     = regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}\b`)
	// IPv6: eight groups, or a "::" form (IPv4-mapped ones end in the
	// IPv4, masked first).
	ipv6Shape = regexp.MustCompile(`(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|(?:\b[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*::(?:[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*)?|::[0-9a-f]{1,4}(?::[0-9a-f]{1,4})*)\b`)
)

// Mask replaces every shape of an identity in s by "-": mail addresses and
// message ids (anything with an "@" in it), IPv4 and IPv6 addresses. It
// cannot see a user name without a domain, a queue id nor a password:
// those are kept out of text by the rules in the package doc.
func Mask(s string) string {
	// Each shape is looked for only where its sign is: the regular
	// expressions cost microseconds, the signs nanoseconds.
	if strings.IndexByte(s, '@') >= 0 {
		s = addrShape.ReplaceAllStringFunc(s, func(m string) string {
			at := strings.IndexByte(m, '@')
			if moduleVersion.MatchString(m[at:]) || !strings.ContainsFunc(m[at:], isAlnum) {
				return m // a module path, or a lone "@" ("unix @->/run/...")
			}
			return "-"
		})
	}
	if digitDotDigit(s) {
		s = ipv4Shape.ReplaceAllString(s, "-")
	}
	if hexColons(s) {
		s = ipv6Shape.ReplaceAllString(s, "-")
	}
	return s
}

// digitDotDigit reports whether s has a digit, a dot and a digit in a row,
// as every IPv4 address has.
func digitDotDigit(s string) bool {
	for i := 1; i+1 < len(s); i++ {
		if s[i] == '.' && isDigit(s[i-1]) && isDigit(s[i+1]) {
			return true
		}
	}
	return false
}

// hexColons reports whether s has a run of hex digits and colons with a
// "::" or seven colons in it, as every IPv6 address has.
func hexColons(s string) bool {
	colons, double := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ':':
			colons++
			double = double || i > 0 && s[i-1] == ':'
			if double || colons >= 7 {
				return true
			}
		case isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F':
		default:
			colons, double = 0, false
		}
	}
	return false
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isAlnum(r rune) bool {
	return r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z'
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

// RouteStdLog sends what libraries log with the standard logger (go-milter's
// "Error performing milter command", net/http's server errors naming the
// client) to l as warnings, so that No-Log and its masking hold there too.
func RouteStdLog(l *slog.Logger) {
	stdlog.SetFlags(0)
	stdlog.SetOutput(slog.NewLogLogger(l.Handler(), slog.LevelWarn).Writer())
}
