package receiver

import (
	"bytes"
	"io"
	"os"
)

// spoolMemory is how much of a body is kept in memory; the rest goes to
// an unlinked temporary file, so that concurrent big messages cost disk,
// not memory.
const spoolMemory = 256 << 10

// spool keeps a message body between the policy's reading of it and the
// LMTP transaction.
type spool struct {
	dir string
	mem bytes.Buffer
	f   *os.File
}

func (s *spool) Write(p []byte) (int, error) {
	if s.f == nil && s.mem.Len()+len(p) <= spoolMemory {
		return s.mem.Write(p)
	}
	if s.f == nil {
		f, err := os.CreateTemp(s.dir, "mxdeliv-*")
		if err != nil {
			return 0, err
		}
		// Unlinked at once: nothing is left behind by a crash, and no one
		// else can open it.
		if err := os.Remove(f.Name()); err != nil {
			_ = f.Close()
			return 0, err
		}
		s.f = f
		if _, err := s.f.Write(s.mem.Bytes()); err != nil {
			return 0, err
		}
		s.mem = bytes.Buffer{}
	}
	return s.f.Write(p)
}

// reader returns the body from its start.
func (s *spool) reader() (io.Reader, error) {
	if s.f == nil {
		return bytes.NewReader(s.mem.Bytes()), nil
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return s.f, nil
}

func (s *spool) close() {
	if s.f != nil {
		_ = s.f.Close() // unlinked; closing frees it
	}
}
