// Package pgtest starts a private PostgreSQL server for tests of code that
// reads and writes the account store: the SQL runs against the real
// server, not a fake. A test that needs it and finds no PostgreSQL fails;
// it never skips.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"chatmail.dev/sidecar/accounts"
)

// server is one PostgreSQL per test binary, started by the first Store call
// and stopped by Stop (from TestMain) or left to die with the binary's
// temporary directory.
var server struct {
	once sync.Once
	dir  string
	bin  string
	err  error
	n    int
	mu   sync.Mutex
}

// binDir finds the server binaries of the newest PostgreSQL installed.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Strings(dirs)
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i], nil
		}
	}
	return "", fmt.Errorf("pgtest: no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)")
}

// run runs a PostgreSQL program, as user postgres when this is root
// (PostgreSQL refuses to run as root).
func run(name string, args ...string) error {
	var cmd *exec.Cmd
	if os.Geteuid() == 0 {
		cmd = exec.Command("runuser", append([]string{"-u", "postgres", "--", name}, args...)...)
	} else {
		cmd = exec.Command(name, args...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", filepath.Base(name), err, out)
	}
	return nil
}

func start() {
	server.bin, server.err = binDir()
	if server.err != nil {
		return
	}
	server.dir, server.err = os.MkdirTemp("", "pgtest-")
	if server.err != nil {
		return
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			server.err = fmt.Errorf("pgtest: %w", err)
			return
		}
		var uid, gid int
		fmt.Sscan(u.Uid, &uid)
		fmt.Sscan(u.Gid, &gid)
		if err := os.Chown(server.dir, uid, gid); err != nil {
			server.err = err
			return
		}
		// Its parents (/tmp) must let user postgres in.
	}
	data := filepath.Join(server.dir, "data")
	if err := run(filepath.Join(server.bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		server.err = err
		return
	}
	server.err = run(filepath.Join(server.bin, "pg_ctl"), "-D", data, "-l", filepath.Join(server.dir, "log"), "-w", "-s", "-t", "30",
		"-o", fmt.Sprintf("-k %s -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off", server.dir), "start")
}

// Stop stops the server, if one was started. Call it from TestMain after
// m.Run.
func Stop() {
	if server.dir == "" {
		return
	}
	_ = run(filepath.Join(server.bin, "pg_ctl"), "-D", filepath.Join(server.dir, "data"), "-m", "immediate", "-w", "-s", "stop")
	_ = os.RemoveAll(server.dir)
}

// DSN returns the DSN of a new, empty database of the test binary's
// server, starting the server at first use.
func DSN(t testing.TB) string {
	t.Helper()
	server.once.Do(start)
	if server.err != nil {
		t.Fatal(server.err)
	}
	server.mu.Lock()
	server.n++
	name := fmt.Sprintf("t%d", server.n)
	server.mu.Unlock()
	base := fmt.Sprintf("host=%s user=postgres sslmode=disable", server.dir)
	if err := run(filepath.Join(server.bin, "psql"), "-h", server.dir, "-U", "postgres", "-qc", "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return base + " dbname=" + name
}

// Store returns a migrated account store on a new, empty database.
func Store(t testing.TB) (*accounts.Store, string) {
	t.Helper()
	dsn := DSN(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := accounts.Open(ctx, dsn, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return s, dsn
}
