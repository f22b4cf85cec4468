package mimescan

import "bytes"

// MaxLine is the longest line kept, terminator included (RFC 5322 2.1.1:
// 998 characters plus CRLF).
const MaxLine = 1000

// Lines cuts a body written in chunks into lines, keeping the start of a
// line split across chunks, in at most MaxLine bytes.
type Lines struct {
	carry    []byte
	returned bool // carry was handed out as a line: empty it at the next call
}

// Reset forgets a line begun in an earlier chunk.
func (s *Lines) Reset() { s.carry, s.returned = s.carry[:0], false }

// Next returns the next complete line of p, terminator included, and the
// rest of p; a line begun in an earlier chunk is completed. ok is false
// when p holds no more complete line: its rest is kept for the next chunk.
// overlong reports a line longer than MaxLine: then the body cannot be cut
// into lines any more. A line is valid until the next call. Judges loop
// over it directly, which costs less per line than a callback; the common
// case, a whole line in p, is inlined.
func (s *Lines) Next(p []byte) (line, rest []byte, ok, overlong bool) {
	if i := bytes.IndexByte(p, '\n'); i >= 0 && i < MaxLine && len(s.carry) == 0 && !s.returned {
		return p[:i+1], p[i+1:], true, false
	}
	return s.next(p)
}

func (s *Lines) next(p []byte) (line, rest []byte, ok, overlong bool) {
	if s.carry == nil {
		s.carry = make([]byte, 0, MaxLine)
	}
	if s.returned {
		s.carry, s.returned = s.carry[:0], false
	}
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		if len(s.carry)+len(p) > MaxLine {
			return nil, nil, false, true
		}
		s.carry = append(s.carry, p...)
		return nil, nil, false, false
	}
	line, rest = p[:i+1], p[i+1:]
	if len(s.carry)+len(line) > MaxLine {
		return nil, nil, false, true
	}
	if len(s.carry) == 0 {
		return line, rest, true, false
	}
	s.carry = append(s.carry, line...)
	s.returned = true
	return s.carry, rest, true, false
}

// Rest returns the unterminated last line, if any, and forgets it.
func (s *Lines) Rest() []byte {
	r := s.carry
	if s.returned {
		r = nil
	}
	s.carry, s.returned = s.carry[:0], false
	return r
}

// Cap is the capacity of the line buffer, for tests of bounded memory.
func (s *Lines) Cap() int { return cap(s.carry) }

// Delimiter reports whether l is a boundary delimiter line for the dash
// boundary dash ("--" and the boundary), and whether it is the close
// delimiter (RFC 2046 5.1.1; transport padding allowed). bad reports a
// line that starts with the dash boundary but is neither: Delta Chat's
// parser (mailparse) starts a part at such a line, so a judge must refuse
// it.
func Delimiter(l, dash []byte) (d, closing, bad bool) {
	if len(l) < len(dash) || l[0] != '-' || !bytes.Equal(l[:len(dash)], dash) {
		return false, false, false
	}
	rest := TrimEOL(l[len(dash):])
	closing = len(rest) >= 2 && rest[0] == '-' && rest[1] == '-'
	if closing {
		rest = rest[2:]
	}
	for _, c := range rest {
		if c != ' ' && c != '\t' {
			return false, false, true
		}
	}
	return true, closing, false
}

// TrimEOL removes a final LF or CRLF.
func TrimEOL(l []byte) []byte {
	if n := len(l); n > 0 && l[n-1] == '\n' {
		l = l[:n-1]
		if n := len(l); n > 0 && l[n-1] == '\r' {
			l = l[:n-1]
		}
	}
	return l
}

// MaxFieldName bounds a header field name.
const MaxFieldName = 76

// FieldName reports whether b is a field name as the judges accept it:
// RFC 5322 ftext (printable ASCII but ':'), starting with a letter or
// digit (a name starting with '-' could be a mangled delimiter), at most
// MaxFieldName bytes.
func FieldName(b []byte) bool {
	if len(b) == 0 || len(b) > MaxFieldName || !alnum(b[0]) {
		return false
	}
	for _, c := range b {
		if c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// EachField calls fn for each field of a header section (lines with their
// terminators), unfolded, with surrounding white space trimmed from the
// value. It reports false for a line that is neither a field with a
// FieldName nor a continuation, or when fn does.
func EachField(h []byte, fn func(name, value []byte) bool) bool {
	var name, value []byte
	flush := func() bool {
		return name == nil || fn(name, bytes.TrimSpace(value))
	}
	for len(h) > 0 {
		i := bytes.IndexByte(h, '\n')
		l := h
		if i >= 0 {
			l, h = h[:i+1], h[i+1:]
		} else {
			h = nil
		}
		l = TrimEOL(l)
		if len(l) > 0 && (l[0] == ' ' || l[0] == '\t') {
			if name == nil {
				return false
			}
			// Unfold into a copy (the capacity cut makes append copy),
			// never into h: unfolded fields are rare.
			value = append(append(value[:len(value):len(value)], ' '), bytes.TrimSpace(l)...)
			continue
		}
		if !flush() {
			return false
		}
		k, v, ok := bytes.Cut(l, []byte(":"))
		if !ok || !FieldName(k) {
			return false
		}
		name, value = k, v
	}
	return flush()
}
