package integration

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"chatmail.dev/integration/stack"
)

// TestNoLogSwitchInPostgres: chatmail-admin nolog switches every daemon
// through PostgreSQL within a second, without a restart: the stack's
// doveauth and chatmail-milter, and a second doveauth on the same database
// as another node would run it.
func TestNoLogSwitchInPostgres(t *testing.T) {
	s := shared
	if s.Env["MILTER_SOCKET"] == "" {
		t.Fatal("the stack runs no chatmail-milter")
	}
	second := startSecondDoveauth(t, s)
	logs := map[string]func() string{
		"doveauth":        func() string { return s.Log(t, "doveauth.log") },
		"chatmail-milter": func() string { return s.Log(t, "milter.log") },
		"second doveauth": func() string { b, _ := os.ReadFile(second); return string(b) },
	}
	defer s.Admin(t, "nolog", "off")

	for _, on := range []bool{true, false, true, false} {
		mode := map[bool]string{true: "on", false: "off"}[on]
		line := "No-Log " + mode + ":"
		before := map[string]int{}
		for name, log := range logs {
			before[name] = strings.Count(log(), line)
		}
		if out := s.Admin(t, "nolog", mode); strings.TrimSpace(out) != "nolog "+mode {
			t.Fatalf("nolog %s said %q", mode, out)
		}
		switched := time.Now()
		for name, log := range logs {
			for strings.Count(log(), line) == before[name] {
				if time.Since(switched) > time.Second {
					t.Fatalf("%s did not log %q within a second of chatmail-admin nolog %s", name, line, mode)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		t.Logf("nolog %s: every daemon followed within %v", mode, time.Since(switched).Round(time.Millisecond))
		if out := s.Admin(t, "nolog", "status"); strings.TrimSpace(out) != "nolog "+mode {
			t.Errorf("nolog status said %q, want nolog %s", out, mode)
		}

		// What the daemons do now: doveauth logs an account's creation and
		// the milter a refused cleartext message, naming the user, only
		// while No-Log is off.
		u := newUsers(t, s, 2)
		if code, _ := smtpCode(submit(s, u[0], goodPassword, u[1], fixture(t, "neg-plain.eml", u[0], u[1]))); code != 523 {
			t.Fatalf("cleartext submission: code %d, want 523", code)
		}
		time.Sleep(200 * time.Millisecond) // the milter logs after it replies
		for name, log := range map[string]string{"doveauth": s.Log(t, "doveauth.log"), "chatmail-milter": s.Log(t, "milter.log")} {
			if named := contains(log, u[0]); named == on {
				t.Errorf("with No-Log %s, %s's log names the user: %v", mode, name, named)
			}
		}
		for name, log := range logs {
			if n := strings.Count(log(), line) - before[name]; n != 1 {
				t.Errorf("%s logged %q %d times, want once", name, line, n)
			}
		}
	}
}

// startSecondDoveauth starts another doveauth with the stack's config on
// other sockets and another metrics port, and returns the path of its log.
func startSecondDoveauth(t *testing.T, s *stack.Stack) string {
	t.Helper()
	cfg, err := os.ReadFile(s.Env["CONFIG"])
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	sock := filepath.Join(dir, "doveauth.sock")
	moves := []string{
		s.Env["DOVEAUTH_SOCKET"], sock,
		filepath.Join(s.Dir, "run", "socketmap.sock"), filepath.Join(dir, "socketmap.sock"),
		s.Env["DOVEAUTH_METRICS"], fmt.Sprintf("127.0.0.1:%d", port),
	}
	if h := s.Env["DOVEAUTH_HTTP_SOCKET"]; h != "" {
		moves = append(moves, h, filepath.Join(dir, "http.sock"))
	}
	text := strings.NewReplacer(moves...).Replace(string(cfg))
	if text == string(cfg) || !strings.Contains(text, sock) {
		t.Fatal("cannot move the second doveauth's sockets")
	}
	path := filepath.Join(dir, "chatmail.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(filepath.Join(s.Dir, "run", "bin"))
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "doveauth.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(filepath.Join(strings.TrimSpace(string(bin)), "doveauth"), "-config", path)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	})
	eventually(t, 10*time.Second, func() error {
		if _, err := os.Stat(sock); err != nil {
			return fmt.Errorf("the second doveauth has no socket: %w", err)
		}
		return nil
	})
	return logPath
}
