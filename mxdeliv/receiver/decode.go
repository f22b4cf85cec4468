package receiver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"

	"chatmail.dev/sidecar/mailpolicy"
)

// Replies to bodies that cannot be used.
var (
	// ReplyTooLarge is Postfix's text for a message over
	// message_size_limit, and filtermail's /mxdeliv answer (with 413).
	ReplyTooLarge = mailpolicy.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message exceeds maximum size"}
	// ReplyMalformed answers a dot-stuffed body with an end-of-data line
	// before its end, and a header with a CR that ends no line.
	ReplyMalformed = mailpolicy.Reply{Code: 554, Enhanced: "5.6.0", Text: "Malformed data"}
)

// ReadError is a failure to read the request body (the sender went away
// or was too slow); no reply reaches it.
type ReadError struct{ Err error }

func (e *ReadError) Error() string { return "reading the request body: " + e.Err.Error() }
func (e *ReadError) Unwrap() error { return e.Err }

// Decoder turns a request body into the message as Postfix would have it
// after DATA: every line ending in CRLF (a bare LF becomes CRLF, as
// Postfix makes it; a last line without one gets one), dot-stuffing
// removed when the body is dot-stuffed. It streams in bounded memory and
// fails with ReplyTooLarge once the message passes its size limit.
//
// Why both forms are told apart by a request header and not guessed:
// removing dot-stuffing from a raw body changes every line that starts
// with a dot ("..x" becomes ".x"), and a guess from the body ("a line
// with one leading dot cannot be stuffed") needs the whole body and is
// still wrong for a raw body whose only dotted lines start with "..". A
// raw body sent without the header (madmail sends raw bytes) is
// unstuffed all the same: PGP/MIME never has a line starting with a dot
// (base64 and boundaries), and where one does, the change breaks the DKIM
// body hash, so the message is refused, never delivered altered.
type Decoder struct {
	br      *bufio.Reader
	stuffed bool
	max     int64
	n       int64
	out     []byte
	off     int
	start   bool // at the start of a line
	prevCR  bool // the last fragment ended in CR
	err     error
}

// NewDecoder decodes r, a body in the given form, up to max bytes of
// message.
func NewDecoder(r io.Reader, stuffed bool, max int64) *Decoder {
	return &Decoder{br: bufio.NewReaderSize(r, 32<<10), stuffed: stuffed, max: max, start: true}
}

// Read implements io.Reader. Its errors are a mailpolicy.Reply
// (ReplyTooLarge, ReplyMalformed) or a *ReadError.
func (d *Decoder) Read(p []byte) (int, error) {
	for d.off == len(d.out) {
		if d.err != nil {
			return 0, d.err
		}
		d.out, d.off = d.out[:0], 0
		d.err = d.fill()
	}
	n := copy(p, d.out[d.off:])
	d.off += n
	return n, nil
}

// fill decodes the next line or fragment of a line into d.out; io.EOF at
// the end of the message.
func (d *Decoder) fill() error {
	s, err := d.br.ReadSlice('\n')
	if err != nil && !errors.Is(err, bufio.ErrBufferFull) && !errors.Is(err, io.EOF) {
		return &ReadError{err}
	}
	eof := errors.Is(err, io.EOF)
	if d.start && d.stuffed && len(s) > 0 && s[0] == '.' {
		if rest := s[1:]; len(rest) == 0 || string(rest) == "\n" || string(rest) == "\r\n" {
			// A line of one dot is the end of data: the sender's, at the
			// very end, or a stray one inside, which nothing can mean.
			if !eof {
				if _, perr := d.br.Peek(1); !errors.Is(perr, io.EOF) {
					if perr != nil {
						return &ReadError{perr}
					}
					return ReplyMalformed
				}
			}
			return io.EOF
		}
		s = s[1:]
	}
	if len(s) > 0 {
		if s[len(s)-1] == '\n' {
			line := s[:len(s)-1]
			if len(line) > 0 && line[len(line)-1] == '\r' || len(line) == 0 && d.prevCR {
				d.out = append(d.out, s...)
			} else {
				d.out = append(d.out, line...)
				d.out = append(d.out, '\r', '\n')
			}
			d.start = true
		} else {
			d.out = append(d.out, s...)
			d.start = false
		}
		d.prevCR = s[len(s)-1] == '\r'
	}
	if eof && !d.start {
		// The last line ends here, as Postfix ends it.
		if d.prevCR {
			d.out = append(d.out, '\n')
		} else {
			d.out = append(d.out, '\r', '\n')
		}
		d.start = true
	}
	d.n += int64(len(d.out))
	if d.n > d.max {
		d.out = d.out[:0]
		return ReplyTooLarge
	}
	if eof {
		return io.EOF // Read returns d.out first
	}
	return nil
}

// Header limits: Postfix's header_size_limit is 100 KiB; the policy keeps
// 256 KiB. Fields past maxFields are no message a chatmail client writes.
const (
	MaxHeaderBytes = 256 << 10
	MaxFields      = 1000
)

// readHeader reads the header section and the empty line after it from
// br, a reader of decoded lines. It returns it with the empty line (added
// when the message has no body). Over the limits it answers
// mailpolicy.ReplyHeaderTooLarge; a CR inside a line is ReplyMalformed,
// so that every reader of the header (the policy's Replay, Apply) sees
// the same lines.
func readHeader(br *bufio.Reader) ([]byte, error) {
	var h []byte
	fields := 0
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, mailpolicy.ReplyHeaderTooLarge
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		if len(h)+len(line) > MaxHeaderBytes {
			return nil, mailpolicy.ReplyHeaderTooLarge
		}
		if len(line) > 0 && (!bytes.HasSuffix(line, []byte("\r\n")) || bytes.IndexByte(line[:len(line)-2], '\r') >= 0) {
			return nil, ReplyMalformed
		}
		h = append(h, line...)
		if errors.Is(err, io.EOF) {
			// No body: the header ends with the message (the decoder
			// ends every line, so h ends in CRLF or is empty).
			return append(h, '\r', '\n'), nil
		}
		if len(line) == 2 {
			return h, nil // the empty line
		}
		if line[0] != ' ' && line[0] != '\t' {
			if fields++; fields > MaxFields {
				return nil, mailpolicy.ReplyHeaderTooLarge
			}
		}
	}
}

// readErrKind names the class of a ReadError for logs: its text names the
// peer's address.
func readErrKind(e *ReadError) string {
	var ne net.Error
	switch {
	case errors.As(e.Err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(e.Err, io.ErrUnexpectedEOF), errors.Is(e.Err, io.EOF):
		return "closed"
	case errors.Is(e.Err, context.Canceled), errors.Is(e.Err, context.DeadlineExceeded):
		return "canceled"
	}
	return "other"
}
