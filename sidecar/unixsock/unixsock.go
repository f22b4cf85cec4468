// Package unixsock binds the unix sockets through which Dovecot and Postfix
// reach the daemons, and the listen addresses that may name either a unix
// socket or a TCP port.
package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Listen binds a unix stream socket at path with the given permission mode
// and, if group is not empty, that group. A stale socket left by a crash is
// removed first; any other file at path is an error, never clobbered.
func Listen(path string, mode uint32, group string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another process is serving this socket", path)
		}
		// Only "nobody listens" marks a socket stale; any other failure
		// (a permission, a busy backlog) may hide a live server.
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: cannot tell whether the socket is in use: %w", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Closing the listener removes the socket file.
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := os.Chmod(path, fs.FileMode(mode)); err != nil {
		ln.Close()
		return nil, err
	}
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			ln.Close()
			return nil, err
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			ln.Close()
			return nil, errors.New("bad gid " + g.Gid)
		}
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, err
		}
	}
	return ln, nil
}

// ParseAddr splits a daemon's listen address, "unix:/absolute/path" or
// "inet:host:port" (the form of Postfix's milter addresses), into a
// network and an address for net.Listen.
func ParseAddr(s string) (network, addr string, err error) {
	kind, rest, _ := strings.Cut(s, ":")
	switch {
	case kind == "unix" && strings.HasPrefix(rest, "/"):
		return "unix", rest, nil
	case kind == "inet" && rest != "":
		return "tcp", rest, nil
	}
	return "", "", fmt.Errorf("%q: want unix:/absolute/path or inet:host:port", s)
}

// ListenAddr listens on a ParseAddr address: a unix socket as Listen makes
// it (stale socket removed, mode and group set), a TCP one plainly.
func ListenAddr(s string, mode uint32, group string) (net.Listener, error) {
	network, addr, err := ParseAddr(s)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return Listen(addr, mode, group)
	}
	return net.Listen(network, addr)
}
