// Package logtest captures what a daemon logs, for tests of the No-Log
// rules that drive real code paths and then look for what must not be in
// the log.
package logtest

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"

	"chatmail.dev/sidecar/logging"
)

// Buffer collects log output; it is safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// New returns a logger as the daemons make it (logging.New, every level),
// writing to the returned Buffer, with No-Log set to nolog.
func New(nolog bool) (*slog.Logger, *logging.NoLog, *Buffer) {
	b := &Buffer{}
	n := &logging.NoLog{}
	n.Set(nolog)
	return logging.New(b, slog.LevelDebug, n), n, b
}

// Leaks returns the needles that out contains, ignoring case (an address
// is the same address in capitals).
func Leaks(out string, needles ...string) []string {
	lower := strings.ToLower(out)
	var found []string
	for _, n := range needles {
		if n != "" && strings.Contains(lower, strings.ToLower(n)) {
			found = append(found, n)
		}
	}
	return found
}

// Shapes returns the lines of out that hold something shaped like an
// identity (logging.Mask would change them): none may under No-Log.
func Shapes(out string) []string {
	var bad []string
	for l := range strings.Lines(out) {
		if logging.Mask(l) != l {
			bad = append(bad, strings.TrimSuffix(l, "\n"))
		}
	}
	return bad
}
