// Package stack starts private chatmail servers for integration tests through
// scripts/stack, the same script an admin runs, and stops them afterwards.
//
// A missing server is a test failure, never a skip: scripts/stack installs
// what is missing when it runs as root, and fails loudly otherwise.
//
// STACK_DEBIAN chooses the Postfix and Dovecot every stack runs: 12 (or
// unset) the host's, 13 those of a Debian 13 tree (scripts/stack up
// --debian 13; DEBIAN13_TREE names the tree's directory).
//
// Federation starts two stacks, each in a network namespace of its own with
// its own address, that find each other through a DNS server and trust a
// test CA (scripts/stack net up; up --netns): see net.go.
package stack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Stack is a running private server.
type Stack struct {
	Dir    string
	Env    map[string]string
	Domain string
}

// Option changes how a stack is started.
type Option func(*[]string)

// Domain sets the mail domain.
func Domain(d string) Option { return func(a *[]string) { *a = append(*a, "--domain", d) } }

// Registration sets the registration mode, "open" or "closed".
func Registration(mode string) Option {
	return func(a *[]string) { *a = append(*a, "--registration", mode) }
}

// PushGateway sets the URL chatmail-metadata posts push notifications to
// (a test's fake gateway). Without it a stack posts to a closed port.
func PushGateway(url string) Option {
	return func(a *[]string) { *a = append(*a, "--push-gateway", url) }
}

// Debian returns the Debian release whose Postfix and Dovecot the stacks
// run: STACK_DEBIAN, by default 12.
func Debian() string {
	if d := os.Getenv("STACK_DEBIAN"); d != "" {
		return d
	}
	return "12"
}

// Repo returns the repository root.
func Repo() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds the daemons once per test process.
func binaries() (string, error) {
	buildOnce.Do(func() {
		if dir := os.Getenv("STACK_BIN"); dir != "" {
			binDir = dir // built already, by the caller
			return
		}
		binDir, buildErr = os.MkdirTemp("", "cmbin")
		if buildErr != nil {
			return
		}
		out, err := exec.Command(filepath.Join(Repo(), "scripts", "stack"), "build", binDir).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("scripts/stack build: %v\n%s", err, out)
		}
	})
	return binDir, buildErr
}

// RemoveBinaries removes the daemons' binaries built for this test process
// (not a STACK_BIN given by the caller); TestMain calls it at the end.
func RemoveBinaries() error {
	if binDir == "" || os.Getenv("STACK_BIN") != "" {
		return nil
	}
	return os.RemoveAll(binDir)
}

// Up brings up a stack in a new directory.
func Up(opts ...Option) (*Stack, error) {
	bin, err := binaries()
	if err != nil {
		return nil, err
	}
	// Short: unix socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "cm")
	if err != nil {
		return nil, err
	}
	args := []string{"up", dir, "--debian", Debian()}
	for _, o := range opts {
		o(&args)
	}
	cmd := exec.Command(filepath.Join(Repo(), "scripts", "stack"), args...)
	cmd.Env = append(os.Environ(), "STACK_BIN="+bin)
	s := &Stack{Dir: dir}
	if out, err := cmd.CombinedOutput(); err != nil {
		derr := s.Down()
		return nil, fmt.Errorf("scripts/stack up: %v\n%s(down: %v)", err, out, derr)
	}
	env, err := ReadEnv(filepath.Join(dir, "stack.env"))
	if err != nil {
		return nil, errors.Join(err, s.Down())
	}
	s.Env, s.Domain = env, env["MAIL_DOMAIN"]
	return s, nil
}

// Start brings up a stack for t and takes it down when t ends.
func Start(t testing.TB, opts ...Option) *Stack {
	t.Helper()
	s, err := Up(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Down(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Down stops everything the stack started. It fails if a port of the stack
// still accepts connections afterwards.
func (s *Stack) Down() error {
	out, err := exec.Command(filepath.Join(Repo(), "scripts", "stack"), "down", s.Dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/stack down %s: %v\n%s", s.Dir, err, out)
	}
	for k, v := range s.Env {
		if strings.HasSuffix(k, "_PORT") {
			if c, err := net.DialTimeout("tcp", net.JoinHostPort(s.Host(), v), 200*time.Millisecond); err == nil {
				c.Close()
				return fmt.Errorf("after down, %s %s still accepts connections (files kept in %s)", k, v, s.Dir)
			}
		}
	}
	return os.RemoveAll(s.Dir)
}

// ReadEnv parses a stack.env file.
func ReadEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s: bad line %q", path, line)
		}
		env[k] = strings.Trim(v, "'")
	}
	return env, sc.Err()
}

// Host returns the address the stack's servers listen on: 127.0.0.1, or
// the address of its network namespace (STACK_HOST), which the root
// namespace reaches.
func (s *Stack) Host() string {
	if h := s.Env["STACK_HOST"]; h != "" {
		return h
	}
	return "127.0.0.1"
}

// Addr returns host:port for an env key such as "IMAP_PORT", host being
// Host.
func (s *Stack) Addr(key string) string {
	if _, err := strconv.Atoi(s.Env[key]); err != nil {
		panic("stack: no port " + key)
	}
	return net.JoinHostPort(s.Host(), s.Env[key])
}

// Run runs a scripts/stack subcommand on this stack, such as
// "stop-postgres" or "restart" with "doveauth".
func (s *Stack) Run(t testing.TB, sub string, args ...string) {
	t.Helper()
	out, err := exec.Command(filepath.Join(Repo(), "scripts", "stack"), append([]string{sub, s.Dir}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/stack %s: %v\n%s", sub, err, out)
	}
}

// Command returns a command that runs a Postfix or Dovecot program of this
// stack: "sendmail", "postqueue", "postconf", "postsuper", "postfix",
// "doveadm" or "doveconf" (stack.env's SENDMAIL and so on: on Debian 13
// the tree's, entered by a wrapper). Pass the stack's configuration
// (POSTFIX_CONFIG_DIR, DOVECOT_CONFIG) with -c or -C, as on the host.
func (s *Stack) Command(tool string, args ...string) *exec.Cmd {
	path := s.Env[strings.ToUpper(tool)]
	if path == "" {
		panic("stack: no " + tool + " in stack.env")
	}
	return exec.Command(path, args...)
}

// Admin runs the admin CLI against this stack and returns its output.
func (s *Stack) Admin(t testing.TB, args ...string) string {
	t.Helper()
	f := strings.Fields(s.Env["ADMIN"])
	out, err := exec.Command(f[0], append(f[1:], args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("chatmail-admin %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// Log returns the contents of a log file in the stack's log directory.
func (s *Stack) Log(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Env["LOG_DIR"], name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
