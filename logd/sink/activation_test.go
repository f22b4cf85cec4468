package sink

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
)

// childEnv makes the test binary act as a socket-activated logd: take the
// passed sockets, match them to the paths in childPaths, read one datagram
// from each and print "path=text" lines.
const (
	childEnv   = "LOGD_TEST_ACTIVATION_CHILD"
	childPaths = "LOGD_TEST_ACTIVATION_PATHS"
)

func TestMain(m *testing.M) {
	if env := os.Getenv(benchSenderEnv); env != "" {
		os.Exit(benchSender(env)) // BenchmarkPipeline's sender
	}
	if os.Getenv(childEnv) != "" {
		if err := activationChild(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func activationChild() error {
	files, err := ListenFDs()
	if err != nil {
		return err
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS"} {
		if v, ok := os.LookupEnv(k); ok {
			return fmt.Errorf("%s=%s left for children", k, v)
		}
	}
	paths := strings.Split(os.Getenv(childPaths), ":")
	conns, err := Adopt(files, paths)
	if err != nil {
		return err
	}
	fmt.Printf("passed=%d\n", len(files))
	buf := make([]byte, 512)
	for i, c := range conns {
		if c == nil {
			fmt.Printf("%s=<not passed>\n", paths[i])
			continue
		}
		if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		fmt.Printf("%s=%s\n", paths[i], buf[:n])
		if err := c.Close(); err != nil {
			return err
		}
	}
	return nil
}

// boundSocket binds a unixgram socket at path, as systemd's ListenDatagram=
// does, and returns it with a copy of its fd to pass on.
func boundSocket(t *testing.T, path string) (*net.UnixConn, *os.File) {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return c, f
}

func sendTo(t *testing.T, path, msg string) {
	t.Helper()
	c, err := net.Dial("unixgram", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// A process started the way systemd starts a socket-activated service
// (LISTEN_PID is its own pid, the sockets from fd 3 in the socket unit's
// order) finds its sockets by their address, whatever the order, and reads
// what was queued in them before it started.
func TestListenFDsReexec(t *testing.T) {
	dir := t.TempDir()
	pf, dc := filepath.Join(dir, "postfix"), filepath.Join(dir, "dovecot")
	_, pfFile := boundSocket(t, pf)
	_, dcFile := boundSocket(t, dc)
	sendTo(t, pf, "to postfix")
	sendTo(t, dc, "to dovecot")
	run := func(pid string, files ...*os.File) (string, error) {
		// sh's $$ is the pid the test binary keeps after exec.
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=`+pid+` LISTEN_FDS=`+fmt.Sprint(len(files))+` exec "$0"`, os.Args[0])
		cmd.Env = append(os.Environ(), childEnv+"=1", childPaths+"="+pf+":"+dc)
		cmd.ExtraFiles = files
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%v: %s", err, stderr.String())
		}
		return string(out), nil
	}
	// Dovecot's socket first: the order of the unit, not of the config.
	out, err := run("$$", dcFile, pfFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := "passed=2\n" + pf + "=to postfix\n" + dc + "=to dovecot\n"; out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
	// Only one passed: the other is the caller's to bind.
	sendTo(t, pf, "again")
	if out, err = run("$$", pfFile); err != nil {
		t.Fatal(err)
	}
	if want := "passed=1\n" + pf + "=again\n" + dc + "=<not passed>\n"; out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
	// LISTEN_PID of another process: the sockets are not ours.
	if out, err = run("1", dcFile, pfFile); err != nil {
		t.Fatal(err)
	}
	if want := "passed=0\n" + pf + "=<not passed>\n" + dc + "=<not passed>\n"; out != want {
		t.Fatalf("got\n%s\nwant\n%s", out, want)
	}
	if _, err = run("$$x", pfFile); err == nil || !strings.Contains(err.Error(), "LISTEN_PID") {
		t.Fatalf("a bad LISTEN_PID: %v", err)
	}
}

// files returns copies of the sockets' fds, as Adopt takes them over.
func files(t *testing.T, fs ...*os.File) []*os.File {
	t.Helper()
	var out []*os.File
	for _, f := range fs {
		fd, err := syscall.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, os.NewFile(uintptr(fd), f.Name()))
	}
	return out
}

func TestAdopt(t *testing.T) {
	dir := t.TempDir()
	a, b, other := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "other")
	_, fa := boundSocket(t, a)
	_, fb := boundSocket(t, b)
	_, fo := boundSocket(t, other)

	conns, err := Adopt(files(t, fb, fa), []string{a, "", b})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{a, "", b} {
		got := ""
		if conns[i] != nil {
			got = conns[i].LocalAddr().String()
			conns[i].Close()
		}
		if got != want {
			t.Errorf("conns[%d] bound to %q, want %q", i, got, want)
		}
	}
	if conns, err := Adopt(nil, []string{a, b}); err != nil || conns[0] != nil || conns[1] != nil {
		t.Errorf("nothing passed: %v %v", conns, err)
	}

	stream, err := net.Listen("unix", filepath.Join(dir, "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	fs, err := stream.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	ufd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	fu := os.NewFile(uintptr(ufd), "unbound")
	defer fu.Close()
	notSocket, err := os.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	defer notSocket.Close()

	for _, c := range []struct {
		name  string
		files []*os.File
		want  string
	}{
		{"a socket of no configured path", files(t, fa, fo), "none of the configured"},
		{"the same path twice", files(t, fa, fa), "two passed sockets"},
		{"a stream socket", files(t, fs), "not a bound unix datagram socket"},
		{"an unbound socket", files(t, fu), "not a bound unix datagram socket"},
		{"not a socket", []*os.File{notSocket}, "passed fd"},
	} {
		_, err := Adopt(c.files, []string{a, b})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error with %q", c.name, err, c.want)
		}
		for _, f := range c.files {
			if f.Fd() != ^uintptr(0) {
				t.Errorf("%s: Adopt left %s open", c.name, f.Name())
			}
		}
	}
}
