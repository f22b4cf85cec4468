package sender

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// Body is one message as the SMTP DATA bytes: CRLF line ends, still
// dot-stuffed, without the final "." line. That is what the reference relay
// posts to /mxdeliv and what our receiver accepts, and it goes out over
// SMTP unchanged with ".\r\n" appended, so the body is never rewritten.
//
// A delivery needs the body more than once (a POST, then SMTP to the same
// host or the next one), and the domains of one message are delivered
// concurrently, so a Body hands out independent readers. Up to the spool
// threshold it is held in memory; above it, in an unlinked temporary file,
// so a big message costs disk, not memory. Close releases either.
type Body struct {
	mem  []byte
	f    *os.File
	size int64
}

// BodyFromBytes returns a Body holding p, which must be in the form
// described at Body; p is not copied.
func BodyFromBytes(p []byte) *Body { return &Body{mem: p, size: int64(len(p))} }

// Size is the length of the body in bytes.
func (b *Body) Size() int64 { return b.size }

// Reader returns a new reader of the whole body, independent of others.
func (b *Body) Reader() *io.SectionReader {
	if b.f != nil {
		return io.NewSectionReader(b.f, 0, b.size)
	}
	return io.NewSectionReader(bytes.NewReader(b.mem), 0, b.size)
}

// Close releases the body; readers may not be used afterwards.
func (b *Body) Close() error {
	b.mem = nil
	if b.f != nil {
		err := b.f.Close()
		b.f = nil
		return err
	}
	return nil
}

// errTooBig says the body went over the size cap; the rest of it was read
// and thrown away.
var errTooBig = errors.New("message exceeds maximum size")

// errBadData says the client ended the connection inside DATA.
var errBadData = errors.New("connection ended inside DATA")

// spool collects a body in memory up to threshold, then in a temporary
// file in dir that is unlinked at once (it vanishes with the process).
type spool struct {
	dir       string
	threshold int64
	max       int64

	buf  []byte
	f    *os.File
	w    *bufio.Writer
	n    int64
	over bool
	err  error
}

func (s *spool) write(p []byte) {
	if s.over || s.err != nil {
		return
	}
	if s.n+int64(len(p)) > s.max {
		s.over = true
		s.discard()
		return
	}
	s.n += int64(len(p))
	if s.f == nil && int64(len(s.buf)+len(p)) <= s.threshold {
		s.buf = append(s.buf, p...)
		return
	}
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, "mxdeliv-*")
		if err != nil {
			s.err = err
			return
		}
		if err := os.Remove(f.Name()); err != nil {
			_ = f.Close() // the removal failure is what we report
			s.err = err
			return
		}
		s.f, s.w = f, bufio.NewWriterSize(f, 64*1024)
		_, s.err = s.w.Write(s.buf)
		s.buf = nil
	}
	if s.err == nil {
		_, s.err = s.w.Write(p)
	}
}

func (s *spool) discard() {
	s.buf = nil
	if s.f != nil {
		_ = s.f.Close() // unlinked already; nothing to keep
		s.f, s.w = nil, nil
	}
}

// finish returns the body, errTooBig, or the spooling error.
func (s *spool) finish() (*Body, error) {
	if s.err == nil && s.w != nil {
		s.err = s.w.Flush()
	}
	if s.over || s.err != nil {
		s.discard()
		if s.over {
			return nil, errTooBig
		}
		return nil, s.err
	}
	return &Body{mem: s.buf, f: s.f, size: s.n}, nil
}

// readData reads a DATA section from r up to and including the "." line
// into s, keeping the dot-stuffing and making every line end in CRLF. It
// stops at the end line even when the body is over the cap, so the
// session stays in step. Lines of any length are read in bounded chunks.
func readData(r *bufio.Reader, s *spool) error {
	atStart, prevCR := true, false
	for {
		chunk, err := r.ReadSlice('\n')
		switch {
		case err == nil:
		case errors.Is(err, bufio.ErrBufferFull):
			s.write(chunk)
			atStart, prevCR = false, chunk[len(chunk)-1] == '\r'
			continue
		case errors.Is(err, io.EOF):
			return errBadData
		default:
			return err
		}
		if atStart && (string(chunk) == ".\r\n" || string(chunk) == ".\n") {
			return nil
		}
		atStart = true
		if len(chunk) >= 2 && chunk[len(chunk)-2] == '\r' || len(chunk) == 1 && prevCR {
			s.write(chunk)
			prevCR = false
			continue
		}
		s.write(chunk[:len(chunk)-1])
		s.write([]byte("\r\n"))
		prevCR = false
	}
}
