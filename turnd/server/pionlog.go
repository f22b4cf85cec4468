package server

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/pion/logging"

	sidelog "chatmail.dev/sidecar/logging"
)

// pionLogs routes pion's logger into ours. pion's messages name client
// and peer addresses and usernames in their text, and its Debug and Info
// levels speak per packet: only its warnings and errors pass, at our
// Debug level (dropped under No-Log, and by default), with every address
// shape masked all the same, and every run of 8 or more hex digits too:
// pion formats some addresses with %x (its channel-bind timer errors),
// which hex-encodes their text, past the address shapes.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{log: f.log, scope: scope}
}

type pionLogger struct {
	log   *slog.Logger
	scope string
}

func (l pionLogger) pass(msg string) {
	if !l.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	l.log.Debug("pion: "+sidelog.Mask(hexRun.ReplaceAllString(msg, "-")), "scope", l.scope)
}

func (l pionLogger) passf(format string, args ...any) {
	if !l.log.Enabled(context.Background(), slog.LevelDebug) {
		return
	}
	l.pass(fmt.Sprintf(format, args...))
}

// hexRun is a run of hex digits as long as an IPv4 address's (%x of its 4
// bytes) or longer.
var hexRun = regexp.MustCompile(`[0-9a-fA-F]{8,}`)

func (pionLogger) Trace(string)          {}
func (pionLogger) Tracef(string, ...any) {}
func (pionLogger) Debug(string)          {}
func (pionLogger) Debugf(string, ...any) {}
func (pionLogger) Info(string)           {}
func (pionLogger) Infof(string, ...any)  {}

func (l pionLogger) Warn(msg string)                   { l.pass(msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.passf(format, args...) }
func (l pionLogger) Error(msg string)                  { l.pass(msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.passf(format, args...) }
