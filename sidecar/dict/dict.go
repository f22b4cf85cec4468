// Package dict implements the server side of Dovecot's dict protocol, the
// "proxy" dict client: protocol 3.x (Dovecot 2.3, and 2.x for older
// clients) and 4.0 (Dovecot 2.4), chosen per connection by the client's
// hello. Dovecot uses it for passdb/userdb lookups (2.3 only: 2.4 has no
// dict passdb or userdb), quota (2.3 dict quota; 2.4 quota_clone),
// last-login and IMAP METADATA.
//
// The protocol is line based: one command per LF-terminated line, fields
// separated by TAB, each field escaped with \x01 sequences. Dovecot opens a
// new connection for almost every lookup, so a connection is cheap here: one
// goroutine, pooled buffers, no per-connection allocation beyond that.
//
//	H<major>\t<minor>\t<value type>\t<user>\t<dict name>   hello, no reply
//	L<key>\t<user>                                          O<value> | N | F<error>
//	I<flags>\t<max rows>\t<path>\t<user>                    O<key>\t<value>... then an empty line (or F<error>)
//	B<id>\t<user>  S<id>\t<key>\t<value>  U<id>\t<key>  A<id>\t<key>\t<diff>  T<id>\t<secs>\t<nsecs>
//	C<id> | D<id>                                           O<id> | N<id> | F<id>\t<error> (D: prefixed with A)
//	R<id>                                                   no reply
//	V<id>\t<yes|no>                                         no reply (3.2 since Dovecot 2.3.21): hide the values from logs
//
// Protocol 4.0 (Dovecot 2.4's dict-client.h; sessions captured from 2.4.1
// under testdata/v4) differs in two places only:
//
//	H4\t0\t0\t\t<dict name>                                  the hello
//	B<id>\t<user>\t<expire secs>                             BEGIN gains the values' lifetime, 0 = forever
//
// and has no D (asynchronous commit) any more: this server refuses D on a
// 4.0 connection, as Dovecot 2.4's own server would. Everything else, the
// replies and the escaping included, is the same. Dovecot's own server
// answers every command with an async id ("*<n>", then "+<n>\t<reply>")
// and timing fields; this one answers in order without them, which the
// clients of both versions accept.
package dict

import (
	"errors"
	"strings"
)

// Escape escapes s for a dict protocol field.
func Escape(s string) string {
	if !strings.ContainsAny(s, "\x00\x01\t\r\n") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case 0:
			b.WriteString("\x010")
		case 1:
			b.WriteString("\x011")
		case '\t':
			b.WriteString("\x01t")
		case '\r':
			b.WriteString("\x01r")
		case '\n':
			b.WriteString("\x01n")
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// ErrBadEscape reports a \x01 not followed by a known escape letter.
var ErrBadEscape = errors.New("dict: bad escape sequence")

// Unescape reverses Escape.
func Unescape(s string) (string, error) {
	i := strings.IndexByte(s, 1)
	if i < 0 {
		return s, nil
	}
	var b strings.Builder
	b.Grow(len(s))
	b.WriteString(s[:i])
	for ; i < len(s); i++ {
		c := s[i]
		if c != 1 {
			b.WriteByte(c)
			continue
		}
		i++
		if i == len(s) {
			return "", ErrBadEscape
		}
		switch s[i] {
		case '0':
			b.WriteByte(0)
		case '1':
			b.WriteByte(1)
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'n':
			b.WriteByte('\n')
		default:
			return "", ErrBadEscape
		}
	}
	return b.String(), nil
}

// splitFields splits a command's arguments at TABs and unescapes each field.
func splitFields(args string) ([]string, error) {
	fields := strings.Split(args, "\t")
	for i, f := range fields {
		u, err := Unescape(f)
		if err != nil {
			return nil, err
		}
		fields[i] = u
	}
	return fields, nil
}
