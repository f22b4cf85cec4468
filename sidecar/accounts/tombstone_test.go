package accounts

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"chatmail.dev/sidecar/keyfile"
)

func TestLoadTombstoneKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tombstone.key")
	// Concurrent first uses (doveauth and chatmail-admin) agree on one key.
	keys := make([]TombstoneKey, 8)
	var wg sync.WaitGroup
	for i := range keys {
		wg.Go(func() {
			k, err := LoadTombstoneKey(path)
			if err != nil {
				t.Error(err)
			}
			keys[i] = k
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if !bytes.Equal(k, keys[0]) || len(k) < keyfile.MinLength {
			t.Fatalf("keys differ or are short: %q %q", k, keys[0])
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("key file mode %v (%v), want 0640", fi.Mode(), err)
	}
	a, b := keys[0].Hash("abcdefghi@chat.test"), TombstoneKey("another key of at least 32 bytes!").Hash("abcdefghi@chat.test")
	if len(a) != 32 || bytes.Equal(a, b) || bytes.Contains(a, []byte("abcdefghi")) {
		t.Errorf("hashes %x %x", a, b)
	}
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTombstoneKey(path); err == nil {
		t.Error("a 5-byte key was accepted")
	}
}
