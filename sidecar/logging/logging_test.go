package logging

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNoLog(t *testing.T) {
	var buf bytes.Buffer
	nolog := &NoLog{}
	log := New(&buf, slog.LevelDebug, nolog).With(User("alice@x.test"))

	log.Info("created", Addr("bob@y.test"))
	if !strings.Contains(buf.String(), "alice@x.test") || !strings.Contains(buf.String(), "bob@y.test") {
		t.Fatalf("No-Log off lost attributes: %s", buf.String())
	}
	buf.Reset()

	nolog.Set(true)
	log.Info("created", Addr("bob@y.test"))
	log.Warn("store down", IP("192.0.2.1"), "err", "timeout", slog.Group("g", MsgID("<m@x>")))
	out := buf.String()
	if strings.Contains(out, "created") {
		t.Errorf("No-Log kept an info record: %s", out)
	}
	for _, leak := range []string{"alice", "bob", "192.0.2.1", "<m@x>"} {
		if strings.Contains(out, leak) {
			t.Errorf("No-Log leaked %q: %s", leak, out)
		}
	}
	if !strings.Contains(out, "store down") || !strings.Contains(out, "timeout") {
		t.Errorf("No-Log dropped a warning: %s", out)
	}

	nolog.Set(false)
	buf.Reset()
	log.Info("again")
	if !strings.Contains(buf.String(), "alice@x.test") {
		t.Errorf("switching No-Log off did not restore attributes: %s", buf.String())
	}
}

func TestFileOn(t *testing.T) {
	f := filepath.Join(t.TempDir(), "nolog")
	if FileOn(f) || FileOn("") {
		t.Error("on without the file")
	}
	if err := os.WriteFile(f, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if !FileOn(f) {
		t.Error("off with the file")
	}
}
