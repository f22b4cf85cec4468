package sink

import (
	"bufio"
	"fmt"
	"os"
	"sync"
)

// File is the output file. It is reopened on Reopen (SIGHUP, for logrotate
// with a postrotate "kill -HUP") and rotated by itself when it grows past
// MaxSize: path becomes path.1, path.1 becomes path.2, ... up to Keep files;
// MaxSize 0 turns the own rotation off. Lines are buffered and flushed
// when the writer has written what was queued (WriteLoop, FlushDelay), so
// a burst or a trickle costs few writes.
type File struct {
	Path    string
	MaxSize int64
	Keep    int

	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	size int64
}

// OpenFile opens path for appending, creating it 0640.
func OpenFile(path string, maxSize int64, keep int) (*File, error) {
	f := &File{Path: path, MaxSize: maxSize, Keep: keep}
	if err := f.open(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *File) open() error {
	fh, err := os.OpenFile(f.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	fi, err := fh.Stat()
	if err != nil {
		fh.Close()
		return err
	}
	f.f, f.w, f.size = fh, bufio.NewWriterSize(fh, 64*1024), fi.Size()
	return nil
}

func (f *File) closeLocked() error {
	if f.f == nil {
		return nil
	}
	err := f.w.Flush()
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	f.f, f.w = nil, nil
	return err
}

// WriteLine implements Output.
func (f *File) WriteLine(line string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.f == nil {
		if err := f.open(); err != nil {
			return err
		}
	}
	if f.MaxSize > 0 && f.size+int64(len(line))+1 > f.MaxSize && f.size > 0 {
		if err := f.rotateLocked(); err != nil {
			return err
		}
	}
	n, err := f.w.WriteString(line)
	if err == nil {
		err = f.w.WriteByte('\n')
		n++
	}
	f.size += int64(n)
	return err
}

// Flush implements Output.
func (f *File) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.w == nil {
		return nil
	}
	return f.w.Flush()
}

// Reopen closes and reopens the file at Path (after an outside rotation).
func (f *File) Reopen() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.closeLocked()
	if oerr := f.open(); oerr != nil {
		return oerr
	}
	return err
}

// Close flushes and closes the file.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closeLocked()
}

func (f *File) rotateLocked() error {
	if err := f.closeLocked(); err != nil {
		return err
	}
	keep := max(f.Keep, 1)
	for i := keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", f.Path, i), fmt.Sprintf("%s.%d", f.Path, i+1)) // a missing generation is fine
	}
	if err := os.Rename(f.Path, f.Path+".1"); err != nil && !os.IsNotExist(err) {
		return err
	}
	return f.open()
}
