// Package keyfile reads the server's secret keys (the tombstone key, the
// TURN secret), each a file that is made at first use: whichever daemon or
// tool starts first makes it, the others read the same key.
package keyfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// MinLength is the shortest key accepted, in bytes of the file.
const MinLength = 32

// Load reads the key file at path, or makes it when it does not exist:
// 32 random bytes, hex-encoded, mode 0640, owned (when running as root) by
// the owner and group of its directory, so that the programs that share
// the key (a daemon under its own user, chatmail-admin as root, a timer in
// the daemon's group) read the same key whichever makes it. Concurrent
// first uses agree on one key. what names the key in errors.
func Load(path, what string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := create(path); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) < MinLength {
		return nil, fmt.Errorf("%s %s: %d bytes, want at least %d", what, path, len(b), MinLength)
	}
	return b, nil
}

func create(path string) error {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	_, err = f.WriteString(hex.EncodeToString(raw) + "\n")
	if err == nil {
		err = f.Chmod(0o640)
	}
	if err == nil && os.Geteuid() == 0 {
		var fi fs.FileInfo
		if fi, err = os.Stat(dir); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				err = f.Chown(int(st.Uid), int(st.Gid))
			}
		}
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// A hard link never replaces a key another process made meanwhile.
	if err := os.Link(tmp, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return nil
}
