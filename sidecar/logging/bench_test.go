package logging

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
)

// The handler sits on the hot paths (doveauth lookups, every milter
// callback that logs): records below the level cost nothing, and the
// identity scan runs only for records written under No-Log.
func benchLog(b *testing.B, on bool, level slog.Level) {
	nolog := &NoLog{}
	nolog.Set(on)
	log := New(io.Discard, slog.LevelInfo, nolog).With("daemon", "doveauth")
	err := errors.New("failed to connect to `user=chatmail database=chatmail`: 127.0.0.1:5432 (localhost): dial error: dial tcp 127.0.0.1:5432: connect: connection refused")
	b.ReportAllocs()
	for b.Loop() {
		log.Log(context.Background(), level, "lookup failed", "kind", "passdb", User("alice@chat.example"), "err", err)
	}
}

func BenchmarkInfoOff(b *testing.B)   { benchLog(b, false, slog.LevelInfo) }
func BenchmarkInfoNoLog(b *testing.B) { benchLog(b, true, slog.LevelInfo) }
func BenchmarkWarnOff(b *testing.B)   { benchLog(b, false, slog.LevelWarn) }
func BenchmarkWarnNoLog(b *testing.B) { benchLog(b, true, slog.LevelWarn) }
