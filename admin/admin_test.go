package admin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDoveadm writes a doveadm that records its arguments and exits with
// code after printing a line that names the user.
func fakeDoveadm(t *testing.T, code int) (*Config, string) {
	t.Helper()
	dir := t.TempDir()
	args := filepath.Join(dir, "args")
	script := "#!/bin/sh\necho \"$@\" >" + args + "\necho \"Error: user $4 is busy\" >&2\necho \"Error: ABCdefghi@Chat.Test from 192.0.2.7 and [2001:db8::7]\" >&2\nexit " + string(rune('0'+code/10)) + string(rune('0'+code%10)) + "\n"
	path := filepath.Join(dir, "doveadm")
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Config{Doveadm: path, DovecotConfig: "/etc/dc.conf"}, args
}

func TestKick(t *testing.T) {
	const addr = "abcdefghi@chat.test"
	c, args := fakeDoveadm(t, 0)
	if err := c.Kick(context.Background(), addr); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(args); err != nil || strings.TrimSpace(string(b)) != "-c /etc/dc.conf kick "+addr {
		t.Errorf("doveadm called with %q (%v)", b, err)
	}
	// No sessions (EX_NOUSER) is fine.
	if c, _ = fakeDoveadm(t, 68); c.Kick(context.Background(), addr) != nil {
		t.Error("exit 68 is an error")
	}
	c, _ = fakeDoveadm(t, 75)
	err := c.Kick(context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "[user] is busy") {
		t.Errorf("failing kick: %v, want doveadm's message", err)
	}
	for _, who := range []string{addr, "ABCdefghi", "192.0.2.7", "2001:db8::7"} {
		if err != nil && strings.Contains(err.Error(), who) {
			t.Errorf("failing kick: %v names %s", err, who)
		}
	}
}
