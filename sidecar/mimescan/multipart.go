package mimescan

import (
	"bytes"
	"errors"
)

// Reasons a multipart body's structure is refused.
var (
	ErrDelimiter  = errors.New("mimescan: line starts like a boundary delimiter but is not one")
	ErrEdge       = errors.New("mimescan: preamble or epilogue too long, or a delimiter after the close delimiter")
	ErrPartHeader = errors.New("mimescan: part header too long or malformed")
)

// Event says what a line of a multipart body was.
type Event uint8

const (
	EdgeLine   Event = iota // a line of the preamble or the epilogue
	PartBegins              // a delimiter: the previous part, if any, ended; Part counts the new one
	HeaderLine              // a line of a part header, added to Header
	HeaderEnds              // the blank line after a part header; Header holds the header
	BodyLine                // a line of a part body
	Closed                  // the close delimiter: the last part ended
	Failed                  // the structure is refused; Err says why
)

// Multipart walks the structure of a multipart body (RFC 2046 5.1) line by
// line, for the judges: it finds delimiters the way Delta Chat's parser
// does and bounds the preamble, the epilogue and each part header, so a
// judge only handles the events of its parts.
type Multipart struct {
	dash            []byte // "--" and the boundary
	maxEdge, maxHdr int
	closed          bool // the close delimiter was seen
	inHeader        bool
	edge            int // preamble or epilogue bytes so far

	EdgeText bool   // a preamble or epilogue line was not blank
	Part     int    // parts begun so far
	Header   []byte // the header of the current part
	Err      error  // why the structure was refused
}

// Reset starts a new body with the given dash boundary ("--" and the
// boundary), edge bound (preamble and, separately, epilogue) and part
// header bound, keeping the header buffer.
func (m *Multipart) Reset(dash []byte, maxEdge, maxHeader int) {
	*m = Multipart{dash: dash, maxEdge: maxEdge, maxHdr: maxHeader, Header: m.Header[:0]}
}

// InBody reports whether the walk is inside a part body, where a line that
// does not start with '-' can only be a BodyLine: the judges' fast path.
func (m *Multipart) InBody() bool { return m.Part > 0 && !m.closed && !m.inHeader && m.Err == nil }

// Ended reports whether the close delimiter was seen.
func (m *Multipart) Ended() bool { return m.closed && m.Err == nil }

func (m *Multipart) fail(err error) Event {
	if m.Err == nil {
		m.Err = err
	}
	return Failed
}

// Line takes one line, terminator included, and says what it was. After
// Failed, the walk is over.
func (m *Multipart) Line(l []byte) Event {
	if m.Err != nil {
		return Failed
	}
	d, closing, bad := Delimiter(l, m.dash)
	switch {
	case bad:
		// Delta Chat's parser (mailparse) starts a part at any line that
		// starts with the dash boundary, whatever follows it.
		return m.fail(ErrDelimiter)
	case d && m.closed:
		return m.fail(ErrEdge) // a delimiter after the close delimiter
	case d && m.inHeader:
		return m.fail(ErrPartHeader)
	case d && closing:
		m.closed, m.edge = true, 0
		return Closed
	case d:
		m.Part++
		m.inHeader, m.edge = true, 0
		m.Header = m.Header[:0]
		return PartBegins
	}
	switch {
	case m.Part == 0 || m.closed:
		m.edge += len(l)
		if m.edge > m.maxEdge {
			return m.fail(ErrEdge)
		}
		if m.Part == 0 && bytes.Contains(l, m.dash) {
			// A parser that finds the first delimiter anywhere, not only
			// at the start of a line, would begin the first part here.
			return m.fail(ErrDelimiter)
		}
		if len(bytes.Trim(l, " \t\r\n")) != 0 {
			m.EdgeText = true
		}
		return EdgeLine
	case m.inHeader:
		if len(TrimEOL(l)) == 0 {
			m.inHeader = false
			return HeaderEnds
		}
		if len(m.Header)+len(l) > m.maxHdr {
			return m.fail(ErrPartHeader)
		}
		m.Header = append(m.Header, l...)
		return HeaderLine
	}
	return BodyLine
}
