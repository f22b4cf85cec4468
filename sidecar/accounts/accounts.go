// Package accounts is the PostgreSQL store of chatmail accounts: the one place
// where what the server knows about a user lives.
package accounts

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"chatmail.dev/sidecar/config"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrNotFound says there is no such account.
var ErrNotFound = errors.New("no such account")

// Account is one row of the store.
type Account struct {
	Address      string
	PasswordHash string
	// StorageBytes and MessageCount are nil until Dovecot first counts.
	StorageBytes      *int64
	MessageCount      *int64
	CreatedAt         time.Time
	LastLogin         *time.Time // a day, in UTC
	RegistrationToken string
	SentMessages      *int64 // nil when counting is off
	ReceivedMessages  *int64
	Blocked           bool
}

// Store is the account store. It is safe for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

// Open connects to PostgreSQL. It does not wait for the server to answer:
// a daemon must start, and answer "try again later", while the database is
// down.
func Open(ctx context.Context, dsn string, maxConns int) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres dsn: %w", err)
	}
	cfg.MaxConns = int32(maxConns)
	// Fail fast while PostgreSQL is down; Dovecot retries, and a lookup must
	// answer within its own timeout rather than queue behind a dead dial.
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	cfg.HealthCheckPeriod = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return &Store{pool: pool}, nil
}

// OpenConfigured opens the store of the configuration's [postgres]
// section with at most maxConns connections (0: max_conns). What is wrong
// with the section is a *config.Error.
func OpenConfigured(ctx context.Context, c *config.Common, maxConns int) (*Store, error) {
	if err := c.RequirePostgres(); err != nil {
		return nil, err
	}
	dsn, err := c.PostgresDSN()
	if err != nil {
		return nil, err
	}
	if maxConns == 0 {
		maxConns = c.Postgres.MaxConns
	}
	s, err := Open(ctx, dsn, maxConns)
	if err != nil {
		return nil, &config.Error{Key: "postgres.dsn", Msg: err.Error()}
	}
	return s, nil
}

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Normalize returns the canonical form of an address and its parts. It
// rejects what cannot be an address at all; what may be created is decided
// by the caller's rules.
func Normalize(addr string) (norm, local, domain string, err error) {
	for i := 0; i < len(addr); i++ {
		// ASCII only: Unicode case folding would map other logins onto an
		// account (the Kelvin sign folds to k).
		if addr[i] >= 0x80 {
			return "", "", "", errMalformed
		}
	}
	norm = strings.ToLower(addr)
	at := strings.LastIndexByte(norm, '@')
	if at <= 0 || at == len(norm)-1 || strings.ContainsAny(norm, "/\\\x00\t\r\n \"") {
		return "", "", "", errMalformed
	}
	return norm, norm[:at], norm[at+1:], nil
}

// errMalformed names no address: it may end up in a log.
var errMalformed = errors.New("malformed address")

const columns = `address, password_hash, storage_bytes, message_count, created_at, last_login, COALESCE(registration_token, ''), sent_messages, received_messages, blocked`

func scan(row pgx.Row) (*Account, error) {
	var a Account
	err := row.Scan(&a.Address, &a.PasswordHash, &a.StorageBytes, &a.MessageCount, &a.CreatedAt, &a.LastLogin, &a.RegistrationToken, &a.SentMessages, &a.ReceivedMessages, &a.Blocked)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return &a, nil
}

// Get returns the account of a normalized address.
func (s *Store) Get(ctx context.Context, address string) (*Account, error) {
	return scan(s.pool.QueryRow(ctx, `SELECT `+columns+` FROM accounts WHERE address = $1`, address))
}

// Credentials is what a login needs of an account.
type Credentials struct {
	PasswordHash string
	Blocked      bool
}

// Credentials returns what a login needs of the account of a normalized
// address: the hot path of every login and lookup, so it reads two
// columns rather than the row.
func (s *Store) Credentials(ctx context.Context, address string) (Credentials, error) {
	var c Credentials
	err := s.pool.QueryRow(ctx, `SELECT password_hash, blocked FROM accounts WHERE address = $1`, address).Scan(&c.PasswordHash, &c.Blocked)
	if errors.Is(err, pgx.ErrNoRows) {
		return Credentials{}, ErrNotFound
	}
	return c, err
}

// New is what creating an account needs.
type New struct {
	Address           string
	PasswordHash      string
	RegistrationToken string
	CountMessages     bool
	// Tombstone is TombstoneKey.Hash(Address). A live tombstone (younger
	// than TombstoneLifetime, or any age when that is 0) makes Create fail
	// with ErrTombstoned.
	Tombstone         []byte
	TombstoneLifetime time.Duration
}

// errNoTombstone guards against a caller that forgot the tombstone check.
var errNoTombstone = errors.New("account creation without a tombstone hash")

// Create creates the account unless it exists or its address has a live
// tombstone. It returns the stored account, and whether this call created
// it. Concurrent calls for one address create exactly one account; the
// others get that one. Creation and Delete of one address are serialized by
// a lock in PostgreSQL, so no doveauth process can create an address whose
// deletion committed before.
func (s *Store) Create(ctx context.Context, n New) (*Account, bool, error) {
	if len(n.Tombstone) != sha256.Size {
		return nil, false, errNoTombstone
	}
	var token *string
	if n.RegistrationToken != "" {
		token = &n.RegistrationToken
	}
	var zero *int64
	if n.CountMessages {
		z := int64(0)
		zero = &z
	}
	var (
		a       *Account
		created bool
	)
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockAddress(ctx, tx, n.Tombstone); err != nil {
			return err
		}
		dead, err := tombstoned(ctx, tx, n.Tombstone, n.TombstoneLifetime)
		if err != nil {
			return err
		}
		if dead {
			return ErrTombstoned
		}
		a, err = scan(tx.QueryRow(ctx, `INSERT INTO accounts (address, password_hash, registration_token, sent_messages, received_messages)
			VALUES ($1, $2, $3, $4, $4) ON CONFLICT (address) DO NOTHING RETURNING `+columns,
			n.Address, n.PasswordHash, token, zero))
		if err == nil {
			created = true
			return nil
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		// The account existed (a concurrent first login created it).
		a, err = scan(tx.QueryRow(ctx, `SELECT `+columns+` FROM accounts WHERE address = $1`, n.Address))
		return err
	})
	if err != nil {
		return nil, false, err
	}
	return a, created, nil
}

// TouchLogin records a login on day (truncated to UTC days). It writes only
// when the day changes, so frequent logins cost a read.
func (s *Store) TouchLogin(ctx context.Context, address string, at time.Time) error {
	day := at.UTC().Truncate(24 * time.Hour)
	_, err := s.pool.Exec(ctx, `UPDATE accounts SET last_login = $2 WHERE address = $1 AND last_login IS DISTINCT FROM $2`, address, day)
	return err
}

// Counter is a change to one quota counter: unset it, set it, or add to it.
type Counter struct {
	Unset bool
	Set   *int64
	Add   int64
}

// Apply folds a later change into c, in the order Dovecot sent them.
func (c *Counter) Apply(o Counter) {
	switch {
	case o.Unset:
		*c = Counter{Unset: true}
	case o.Set != nil:
		v := *o.Set
		*c = Counter{Set: &v}
	default:
		c.Add += o.Add
	}
}

// Quota is a change to an account's quota counters, and the messages
// delivered to it in the same transaction (counted only where counting is on).
type Quota struct {
	Storage, Messages Counter
	Received          int64
	// Delivered marks a delivery that reports the counters' new values
	// rather than increments (Dovecot 2.4's quota_clone): it counts as one
	// received message if it changes them, as storing a message does. A
	// delivery refused for quota reports them unchanged.
	Delivered bool
}

// UpdateQuota applies q atomically. Adding to a counter that was never set
// leaves it unset, so Dovecot recounts; received_messages is NULL, and stays
// so, for accounts created while counting was off.
func (s *Store) UpdateQuota(ctx context.Context, address string, q Quota) error {
	mode := func(c Counter) (int, *int64, int64) {
		switch {
		case c.Unset:
			return 2, nil, 0
		case c.Set != nil:
			return 1, c.Set, c.Add
		}
		return 0, nil, c.Add
	}
	sm, sv, sa := mode(q.Storage)
	mm, mv, ma := mode(q.Messages)
	// Every expression sees the row as it was: the comparison is with the
	// old values.
	const (
		storage  = `CASE $2::int WHEN 1 THEN $3::bigint WHEN 2 THEN NULL ELSE storage_bytes END + $4::bigint`
		messages = `CASE $5::int WHEN 1 THEN $6::bigint WHEN 2 THEN NULL ELSE message_count END + $7::bigint`
	)
	_, err := s.pool.Exec(ctx, `UPDATE accounts SET
		storage_bytes = `+storage+`,
		message_count = `+messages+`,
		received_messages = received_messages + $8::bigint + CASE WHEN $9::bool
			AND (storage_bytes IS DISTINCT FROM `+storage+` OR message_count IS DISTINCT FROM `+messages+`)
			THEN 1 ELSE 0 END
		WHERE address = $1`, address, sm, sv, sa, mm, mv, ma, q.Received, q.Delivered)
	return err
}

// SetBlocked blocks or unblocks an account, and tells the caches
// (WatchChanges) in the same transaction.
func (s *Store) SetBlocked(ctx context.Context, address string, blocked bool) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE accounts SET blocked = $2 WHERE address = $1`, address, blocked)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return notifyChanged(ctx, tx, address)
	})
}

// Delete removes an account's row and leaves its tombstone
// (TombstoneKey.Hash of the address) with its mail pending removal, and
// tells the caches (WatchChanges), in one transaction. The caller then
// removes the mail and calls MailRemoved; until then the tombstone refuses
// the address whatever its age (see Create) and is never purged.
func (s *Store) Delete(ctx context.Context, address string, tombstone []byte) error {
	if len(tombstone) != sha256.Size {
		return errNoTombstone
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := lockAddress(ctx, tx, tombstone); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM accounts WHERE address = $1`, address)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		if _, err = tx.Exec(ctx, `INSERT INTO tombstones (address_hmac, mail_pending) VALUES ($1, true)
			ON CONFLICT (address_hmac) DO UPDATE SET created_at = now(), mail_pending = true`, tombstone); err != nil {
			return err
		}
		return notifyChanged(ctx, tx, address)
	})
}

// Each calls fn for every account, in address order.
func (s *Store) Each(ctx context.Context, fn func(*Account) error) error {
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM accounts ORDER BY address`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		a, err := scan(rows)
		if err != nil {
			return err
		}
		if err := fn(a); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Stats are usage totals for the admin: counts and sums, never content.
type Stats struct {
	Accounts, Blocked, ActiveToday, Active30Days int64
	StorageBytes, Messages                       int64
}

// Stats returns usage totals.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE blocked),
		count(*) FILTER (WHERE last_login >= current_date), count(*) FILTER (WHERE last_login >= current_date - 30),
		COALESCE(sum(storage_bytes), 0)::bigint, COALESCE(sum(message_count), 0)::bigint FROM accounts`).
		Scan(&st.Accounts, &st.Blocked, &st.ActiveToday, &st.Active30Days, &st.StorageBytes, &st.Messages)
	return st, err
}
