package integration

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// probeEnv makes the test binary, run again as another user, try to connect
// to each unix socket named in it (one a line) and print "path<TAB>result"
// for each: "ok" or the errno's name.
const probeEnv = "CHATMAIL_SOCKET_PROBE"

func init() {
	paths, ok := os.LookupEnv(probeEnv)
	if !ok {
		return
	}
	for _, p := range strings.Split(paths, "\n") {
		os.Stdout.WriteString(p + "\t" + probe(p) + "\n")
	}
	os.Exit(0)
}

func probe(path string) string {
	c, err := net.Dial("unix", path)
	if errors.Is(err, syscall.EPROTOTYPE) {
		c, err = net.Dial("unixgram", path)
	}
	if err == nil {
		c.Close()
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return strconv.Itoa(int(errno))
	}
	return err.Error()
}

// publicTempDir returns a new directory that every user may enter (those of
// t.TempDir are inside a private one).
func publicTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cmprobe")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// probeAs runs probe on each path as user u (no supplementary groups) and
// returns the result per path.
func probeAs(t *testing.T, u *user.User, paths []string) map[string]string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary sits in a private build directory: copy it out.
	dir := publicTempDir(t)
	bin := filepath.Join(dir, "probe")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		t.Fatal(err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Dir = "/"
	cmd.Env = []string{probeEnv + "=" + strings.Join(paths, "\n")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe as %s: %v", u.Username, err)
	}
	res := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		p, r, _ := strings.Cut(sc.Text(), "\t")
		res[p] = r
	}
	if len(res) != len(paths) {
		t.Fatalf("probe answered for %d of %d sockets: %s", len(res), len(paths), out)
	}
	return res
}

// No local user reaches a socket of the stack: not doveauth's dict (password
// hashes), not chatmail-metadata's (TURN credentials, device tokens), not LMTP or the milter (delivery around the filter), not Dovecot's
// auth or userdb (password guessing, the list of accounts). The stack is
// otherwise the one every other test uses, so they show it still works.
func TestSocketsRefuseLocalUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, to probe as another user")
	}
	s := shared
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	var sockets []string
	err = filepath.WalkDir(s.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSocket != 0 {
			sockets = append(sockets, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The sockets the stack configures itself, by mode and group.
	named := map[string]string{
		s.Env["DOVEAUTH_SOCKET"]:                        "dovecot",
		filepath.Join(s.Dir, "run", "socketmap.sock"):   "postfix",
		s.Env["LMTP_SOCKET"]:                            "postfix",
		filepath.Join(s.Dir, "run", "auth-client.sock"): "postfix",
	}
	if m := s.Env["MILTER_SOCKET"]; m != "" {
		named[m] = "postfix"
	}
	// chatmail-metadata's dict: TURN credentials and device tokens of any
	// account the connecting process names.
	requireMetadata(t, s)
	named[s.Env["METADATA_SOCKET"]] = "dovecot"
	for p, group := range named {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		g, err := user.LookupGroup(group)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != 0o660 || strconv.Itoa(int(st.Gid)) != g.Gid {
			t.Errorf("%s: mode %v gid %d, want 0660 group %s", p, fi.Mode().Perm(), st.Gid, group)
		}
	}

	// A control: the probe does connect where it may.
	open := filepath.Join(publicTempDir(t), "open.sock")
	ln, err := net.Listen("unix", open)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := os.Chmod(open, 0o666); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	res := probeAs(t, nobody, append(sockets, open))
	if res[open] != "ok" {
		t.Fatalf("the probe cannot reach a 0666 socket: %s", res[open])
	}
	eacces := strconv.Itoa(int(syscall.EACCES))
	for _, p := range sockets {
		if res[p] != eacces {
			t.Errorf("%s: user nobody got %q, want permission denied", p, res[p])
		}
	}
	for p := range named {
		if _, ok := res[p]; !ok {
			t.Errorf("%s was not probed", p)
		}
	}
}
