package sink

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// firstListenFD is SD_LISTEN_FDS_START: passed sockets begin at fd 3.
const firstListenFD = 3

// ListenFDs returns the sockets the service manager passed to this process
// (socket activation, sd_listen_fds(3)): fds 3 .. 3+LISTEN_FDS-1 when
// LISTEN_PID is this process, none otherwise. It unsets the variables, so
// that no child takes the sockets for its own.
//
// Why logd wants this: Postfix processes connect to the log socket once and
// never reconnect, so a sink that binds a new socket at each start leaves
// every running Postfix process logging into the old, dead inode. A socket
// held by systemd keeps its inode across restarts, and what is sent while
// logd restarts waits in it.
func ListenFDs() ([]*os.File, error) {
	pid, fds := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		if err := os.Unsetenv(k); err != nil {
			return nil, err
		}
	}
	if pid == "" && fds == "" {
		return nil, nil
	}
	p, err := strconv.Atoi(pid)
	if err != nil {
		return nil, fmt.Errorf("LISTEN_PID %q: %w", pid, err)
	}
	if p != os.Getpid() {
		return nil, nil // meant for another process
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("LISTEN_FDS %q is not a count", fds)
	}
	files := make([]*os.File, 0, n)
	for fd := firstListenFD; fd < firstListenFD+n; fd++ {
		syscall.CloseOnExec(fd)
		files = append(files, os.NewFile(uintptr(fd), "listen-fd-"+strconv.Itoa(fd)))
	}
	return files, nil
}

// Adopt matches inherited sockets to paths by the address each one is
// bound to, not by their order, which follows the socket unit and not the
// config: conns[i] is the socket bound to paths[i], nil when none was
// passed (the caller binds it). It takes over files: each is closed, or
// turned into its conn. A passed socket that is not a unix datagram socket,
// or is bound to none of paths, is an error: a socket unit and a config that
// disagree would leave Postfix or Dovecot sending to a socket nobody reads.
func Adopt(files []*os.File, paths []string) ([]*net.UnixConn, error) {
	conns := make([]*net.UnixConn, len(paths))
	fail := func(i int, err error) ([]*net.UnixConn, error) {
		for _, f := range files[i+1:] {
			_ = f.Close() // never adopted; err says why
		}
		for _, c := range conns {
			if c != nil {
				_ = c.Close()
			}
		}
		return nil, err
	}
	for i, f := range files {
		c, err := adoptOne(f)
		if err != nil {
			return fail(i, err)
		}
		name := c.LocalAddr().(*net.UnixAddr).Name
		match := -1
		for j, p := range paths {
			if p != "" && filepath.Clean(p) == filepath.Clean(name) {
				match = j
				break
			}
		}
		if match < 0 || conns[match] != nil {
			_ = c.Close() // not adopted
			if match < 0 {
				return fail(i, fmt.Errorf("passed socket %s is none of the configured sockets %q", name, paths))
			}
			return fail(i, fmt.Errorf("two passed sockets are bound to %s", name))
		}
		conns[match] = c
	}
	return conns, nil
}

// adoptOne turns f into a bound unix datagram conn and closes f.
func adoptOne(f *os.File) (*net.UnixConn, error) {
	c, err := net.FileConn(f) // a dup; f is ours to close
	if cerr := f.Close(); err == nil && cerr != nil {
		if c != nil {
			_ = c.Close() // cerr says why
		}
		return nil, cerr
	}
	if err != nil {
		return nil, fmt.Errorf("passed fd %s: %w", f.Name(), err)
	}
	uc, ok := c.(*net.UnixConn)
	var addr *net.UnixAddr
	if ok {
		addr, _ = uc.LocalAddr().(*net.UnixAddr)
	}
	if addr == nil || addr.Net != "unixgram" || !strings.HasPrefix(addr.Name, "/") {
		_ = c.Close() // the error says why
		return nil, errors.New("passed fd " + f.Name() + " is not a bound unix datagram socket (ListenDatagram= with a path)")
	}
	return uc, nil
}
