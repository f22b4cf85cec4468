package server

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/logging"
)

const common = "[mail]\ndomains = [\"chat.test\"]\n"

// parse runs config.Parse on the [logd] section.
func parse(t *testing.T, text string) (*Config, error) {
	t.Helper()
	c := Defaults()
	_, err := config.Parse(common+text, "logd", &c)
	return &c, err
}

func TestSection(t *testing.T) {
	c, err := parse(t, "[logd]\noutput = \"/var/log/x.log\"\nqueue_length = 10\nqueue_bytes = 1048576\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Output != "/var/log/x.log" || c.QueueLength != 10 || c.QueueBytes != 1<<20 || c.Metrics != "127.0.0.1:9727" {
		t.Fatalf("%+v", c)
	}
	for _, bad := range []string{
		"[logd]\nqueue_length = 0\n",
		"[logd]\nqueue_bytes = 1000\n",
		"[logd]\noutput = \"rel.log\"\n",
		"[logd]\nmetrics = \"0.0.0.0:9727\"\n",
		"[logd]\nsockett = \"/x\"\n",
		"[logd]\npostfix_socket = \"\"\ndovecot_socket = \"\"\n",
		"[logd]\npostfix_socket = \"/run/x\"\ndovecot_socket = \"/run/./x\"\n",
	} {
		if _, err := parse(t, bad); err == nil || !config.IsError(err) {
			t.Errorf("%q: got %v, want a config error", bad, err)
		}
	}
}

// TestExampleIsDefaults: chatmail.toml.example shows the [logd] defaults.
func TestExampleIsDefaults(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "logd", Defaults); err != nil {
		t.Error(err)
	}
}

// Under socket activation logd serves the passed socket, binds the other
// itself, and at exit removes only the one it bound: the passed socket's
// inode is what every running Postfix process is connected to. What comes
// after logd stopped reading stays in the passed socket for the next logd.
func TestRunPassedSocket(t *testing.T) {
	dir := t.TempDir()
	c := Defaults()
	c.PostfixSocket = filepath.Join(dir, "postfix.sock")
	c.DovecotSocket = filepath.Join(dir, "dovecot.sock")
	c.Output = filepath.Join(dir, "mail.log")
	held, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: c.PostfixSocket, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	passed, err := held.File() // what systemd passes: the same socket
	if err != nil {
		t.Fatal(err)
	}
	env := &daemon.Env{Log: slog.New(slog.DiscardHandler), NoLog: &logging.NoLog{}, Registry: prometheus.NewRegistry()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, env, &c, []*os.File{passed}) }()

	send := func(path, line string) {
		t.Helper()
		conn, err := net.Dial("unixgram", path)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(c.DovecotSocket); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("logd did not bind the socket that was not passed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	send(c.PostfixSocket, "Nov 29 14:10:13 mx postfix/smtpd[1]: connect from localhost[127.0.0.1]")
	send(c.DovecotSocket, "<22>Nov 29 14:10:11 dovecot: imap-login: Login: user=<bob@chat.test>")
	for {
		b, err := os.ReadFile(c.Output)
		if err == nil && strings.Count(string(b), "\n") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("output %q, %v", b, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.DovecotSocket); !os.IsNotExist(err) {
		t.Errorf("the socket logd bound is still there: %v", err)
	}
	fi, err := os.Lstat(c.PostfixSocket)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("the passed socket is gone: %v", err)
	}
	send(c.PostfixSocket, "after logd")
	if err := held.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := held.Read(buf); err != nil || string(buf[:n]) != "after logd" {
		t.Fatalf("the passed socket after logd: %q %v", buf[:n], err)
	}
}

func TestRunPassedSocketMismatch(t *testing.T) {
	dir := t.TempDir()
	c := Defaults()
	c.PostfixSocket = filepath.Join(dir, "postfix.sock")
	c.DovecotSocket = filepath.Join(dir, "dovecot.sock")
	c.Output = filepath.Join(dir, "mail.log")
	other, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "other.sock"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	f, err := other.File()
	if err != nil {
		t.Fatal(err)
	}
	env := &daemon.Env{Log: slog.New(slog.DiscardHandler), NoLog: &logging.NoLog{}, Registry: prometheus.NewRegistry()}
	if err := run(context.Background(), env, &c, []*os.File{f}); err == nil || !strings.Contains(err.Error(), "none of the configured") {
		t.Fatalf("a passed socket of no configured path: %v", err)
	}
	if _, err := os.Stat(c.PostfixSocket); !os.IsNotExist(err) {
		t.Errorf("bound a socket after all: %v", err)
	}
}
