package accounts

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrTombstoned says the address belonged to a deleted account and may not
// be registered again (yet).
var ErrTombstoned = errors.New("address of a deleted account")

// minKeyLength is the shortest tombstone key accepted, in bytes of the file.
const minKeyLength = 32

// TombstoneKey is the secret that tombstones are keyed with.
type TombstoneKey []byte

// Hash returns the tombstone of a normalized address: HMAC-SHA256 with the
// key. Without the key a tombstone cannot be tested against guessed
// addresses.
func (k TombstoneKey) Hash(address string) []byte {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(address))
	return m.Sum(nil)
}

// LoadTombstoneKey reads the key file, or makes it when it does not exist:
// 32 random bytes, hex-encoded, mode 0640, owned (when running as root) by
// the owner and group of its directory, so that chatmail-admin run as root,
// doveauth under its own user and the sweep (in that user's group) read the
// same key whichever makes it.
// Concurrent first uses agree on one key.
func LoadTombstoneKey(path string) (TombstoneKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createKeyFile(path); err != nil {
			return nil, fmt.Errorf("tombstone key: %w", err)
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("tombstone key: %w", err)
	}
	if len(b) < minKeyLength {
		return nil, fmt.Errorf("tombstone key %s: %d bytes, want at least %d", path, len(b), minKeyLength)
	}
	return TombstoneKey(b), nil
}

func createKeyFile(path string) error {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tombstone-key-*")
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

// tombstoneLockClass is the first key of the advisory locks that order an
// account's creation against its deletion ("tomb").
const tombstoneLockClass = 0x746f6d62

// lockAddress takes the transaction-scoped lock of one address, keyed by
// its tombstone so that the address appears nowhere.
func lockAddress(ctx context.Context, tx pgx.Tx, tombstone []byte) error {
	_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::int, $2::int)`, tombstoneLockClass, int32(binary.BigEndian.Uint32(tombstone)))
	return err
}

// tombstoned reports whether a live tombstone exists: younger than
// lifetime (any age when it is 0), or with its mail not yet removed. Called
// after lockAddress, its statement sees every deletion committed before.
func tombstoned(ctx context.Context, tx pgx.Tx, tombstone []byte, lifetime time.Duration) (bool, error) {
	var dead bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tombstones WHERE address_hmac = $1
		AND (mail_pending OR $2::bigint = 0 OR created_at > now() - $2::bigint * interval '1 microsecond'))`,
		tombstone, lifetime.Microseconds()).Scan(&dead)
	return dead, err
}

// MailPending reports whether the tombstone exists with its account's mail
// not yet removed: a deletion that stopped between the row and the mail.
func (s *Store) MailPending(ctx context.Context, tombstone []byte) (bool, error) {
	var pending bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tombstones WHERE address_hmac = $1 AND mail_pending)`, tombstone).Scan(&pending)
	return pending, err
}

// HasTombstone reports whether a tombstone exists for the hash, at any age.
func (s *Store) HasTombstone(ctx context.Context, tombstone []byte) (bool, error) {
	var dead bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tombstones WHERE address_hmac = $1)`, tombstone).Scan(&dead)
	return dead, err
}

// MailRemoved records that the mail of the tombstone's account is gone, so
// the tombstone ages (tombstone_lifetime) like any other.
func (s *Store) MailRemoved(ctx context.Context, tombstone []byte) error {
	_, err := s.pool.Exec(ctx, `UPDATE tombstones SET mail_pending = false WHERE address_hmac = $1`, tombstone)
	return err
}

// PurgeTombstones removes tombstones older than lifetime (none when it is
// 0, forever) whose mail was removed, and returns how many.
func (s *Store) PurgeTombstones(ctx context.Context, lifetime time.Duration) (int64, error) {
	if lifetime <= 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM tombstones WHERE NOT mail_pending AND created_at <= now() - $1::bigint * interval '1 microsecond'`, lifetime.Microseconds())
	return tag.RowsAffected(), err
}
