package accounts

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"time"

	"chatmail.dev/sidecar/keyfile"
	"github.com/jackc/pgx/v5"
)

// ErrTombstoned says the address belonged to a deleted account and may not
// be registered again (yet).
var ErrTombstoned = errors.New("address of a deleted account")

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

// LoadTombstoneKey reads the key file, or makes it when it does not exist
// (keyfile.Load): chatmail-admin run as root, doveauth under its own user
// and the sweep (in that user's group) read the same key whichever makes it.
func LoadTombstoneKey(path string) (TombstoneKey, error) {
	b, err := keyfile.Load(path, "tombstone key")
	return TombstoneKey(b), err
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
