package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListen(t *testing.T) {
	dir, err := os.MkdirTemp("", "us") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "run", "s.sock")

	// A fresh socket, in a directory made for it, with its mode.
	ln, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("mode: %v %v", fi.Mode(), err)
	}
	// A live socket is never taken over.
	if _, err := Listen(path, 0o660, ""); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	// A socket left by a crash (nobody listens) is replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the crash left no socket to test with")
	}
	ln, err = Listen(path, 0o600, "")
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	// Closing removes it.
	ln.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}
	// Any other file is left alone.
	if err := os.WriteFile(path, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path, 0o660, ""); err == nil {
		t.Fatal("listened over a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep" {
		t.Fatal("regular file clobbered")
	}
	// An unknown group is an error, not a socket with the wrong group.
	if _, err := Listen(filepath.Join(dir, "g.sock"), 0o660, "no-such-group-xyz"); err == nil {
		t.Fatal("unknown group accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "g.sock")); !os.IsNotExist(err) {
		t.Fatal("socket left behind after a failed Listen")
	}
}

func TestParseAddr(t *testing.T) {
	for in, want := range map[string][2]string{
		"unix:/run/x.sock":     {"unix", "/run/x.sock"},
		"inet:127.0.0.1:10082": {"tcp", "127.0.0.1:10082"},
		"inet:[::1]:443":       {"tcp", "[::1]:443"},
	} {
		n, a, err := ParseAddr(in)
		if err != nil || n != want[0] || a != want[1] {
			t.Errorf("ParseAddr(%q) = %q %q %v, want %q", in, n, a, err, want)
		}
	}
	for _, bad := range []string{"", "unix:relative.sock", "inet:", "tcp:127.0.0.1:1", "/run/x.sock"} {
		if _, _, err := ParseAddr(bad); err == nil {
			t.Errorf("ParseAddr(%q) accepted", bad)
		}
	}
	dir := t.TempDir()
	for _, addr := range []string{"unix:" + filepath.Join(dir, "s.sock"), "inet:127.0.0.1:0"} {
		ln, err := ListenAddr(addr, 0o600, "")
		if err != nil {
			t.Fatalf("ListenAddr(%q): %v", addr, err)
		}
		ln.Close()
	}
}
