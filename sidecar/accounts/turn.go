package accounts

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"chatmail.dev/sidecar/turncred"
	"github.com/jackc/pgx/v5"
)

// day is the resolution of what a TURN credential tells about its issue.
const day = 24 * 60 * 60

// randomTries is how many random seconds of a day IssueTurnCredential
// tries before it looks for a free one.
const randomTries = 8

// spillDays is how many days after the day of now+lifetime a credential
// may expire on when that day is full: a day has 86,400 seconds, and each
// credential needs its own (the username is the expiry, nothing else), so
// a server issues at most that many a day, enough for about 390,000
// accounts that call each day with the default lifetime of 5 days (one
// credential per account every 4.5 days).
const spillDays = 2

// ErrTurnCredentialsExhausted says every second of the days a new
// credential could expire on is taken.
var ErrTurnCredentialsExhausted = errors.New("no TURN credential left to issue")

// IssueTurnCredential returns the expiry (the TURN username) of a
// credential of the account of a normalized address that is valid beyond
// now+turncred.ReuseMargin, or issues a new one when it has none. A new
// credential expires on the day of now+lifetime, at a second of that day
// drawn at random among those no other credential has, expired or not
// (a deleted account's credential keeps its second until it expires): it
// is valid for lifetime, give or take a day, and its row says no more than
// the day it was issued. ErrNotFound: there is no such account, or it is
// blocked. ErrTurnCredentialsExhausted: a new one was needed and there is
// none left.
//
// Every GETMETADATA of the key asks, and nearly all find a credential to
// hand out again: that is a plain read (TurnCredential), without a lock or
// a write. Only issuing takes the account's row lock, and checks again
// under it.
func (s *Store) IssueTurnCredential(ctx context.Context, address string, now time.Time, lifetime time.Duration) (int64, error) {
	expiry, ok, err := s.TurnCredential(ctx, address, now)
	if ok || err != nil {
		return expiry, err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after Commit
	// The row lock serializes the account's concurrent logins (one
	// credential, not one each) and orders the issue against a block.
	var blocked bool
	err = tx.QueryRow(ctx, `SELECT blocked FROM accounts WHERE address = $1 FOR NO KEY UPDATE`, address).Scan(&blocked)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && blocked) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, err
	}
	// A concurrent login may have issued one since the read.
	var have *int64
	if err := tx.QueryRow(ctx, `SELECT max(expiry) FROM turn_credentials WHERE address = $1 AND expiry > $2`,
		address, reuseAfter(now)).Scan(&have); err != nil {
		return 0, err
	}
	if have != nil {
		return *have, tx.Commit(ctx)
	}
	expiry, err = insertTurnCredential(ctx, tx, address, now.Add(lifetime).Unix()/day*day)
	if err != nil {
		return 0, err
	}
	return expiry, tx.Commit(ctx)
}

// reuseAfter is the expiry a credential handed out again at now must
// pass.
func reuseAfter(now time.Time) int64 { return now.Add(turncred.ReuseMargin).Unix() }

// TurnCredential returns the expiry of the credential IssueTurnCredential
// would hand out again at now, and false when the account has none with
// more than turncred.ReuseMargin left. It only reads. ErrNotFound: there
// is no such account, or it is blocked.
func (s *Store) TurnCredential(ctx context.Context, address string, now time.Time) (int64, bool, error) {
	var blocked bool
	var have *int64
	err := s.pool.QueryRow(ctx, `SELECT blocked,
			(SELECT max(expiry) FROM turn_credentials WHERE address = $1 AND expiry > $2)
		FROM accounts WHERE address = $1`, address, reuseAfter(now)).Scan(&blocked, &have)
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && blocked):
		return 0, false, ErrNotFound
	case err != nil:
		return 0, false, err
	case have == nil:
		return 0, false, nil
	}
	return *have, true, nil
}

// insertTurnCredential records a credential of address expiring on the
// day that starts at start (or, when every second of it is taken, one of
// the spillDays after), at a free second.
func insertTurnCredential(ctx context.Context, tx pgx.Tx, address string, start int64) (int64, error) {
	insert := func(expiry int64) (bool, error) {
		// DO NOTHING: a second taken meanwhile by another transaction is
		// no error that would end ours.
		tag, err := tx.Exec(ctx, `INSERT INTO turn_credentials (expiry, address) VALUES ($1, $2) ON CONFLICT (expiry) DO NOTHING`, expiry, address)
		return tag.RowsAffected() == 1, err
	}
	for range spillDays + 1 {
		for range randomTries {
			expiry := start + rand.Int64N(day)
			ok, err := insert(expiry)
			if err != nil || ok {
				return expiry, err
			}
		}
		// A crowded day: the first free second after a random one (then
		// from the day's start), so that the order of the seconds does not
		// tell the order of the logins.
		from := start + rand.Int64N(day)
		var free *int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(
			(SELECT min(s) FROM generate_series($2::bigint, $1::bigint + $3 - 1) AS s WHERE NOT EXISTS (SELECT 1 FROM turn_credentials WHERE expiry = s)),
			(SELECT min(s) FROM generate_series($1::bigint, $2::bigint - 1) AS s WHERE NOT EXISTS (SELECT 1 FROM turn_credentials WHERE expiry = s)))`,
			start, from, day).Scan(&free); err != nil {
			return 0, err
		}
		if free != nil {
			ok, err := insert(*free)
			if err != nil || ok {
				return *free, err
			}
		}
		start += day
	}
	return 0, ErrTurnCredentialsExhausted
}

// TurnCredentialAccount returns the account a credential was issued to, by
// its username (expiry): ErrNotFound when it was not issued, has expired
// at now, or its account was deleted or is blocked.
func (s *Store) TurnCredentialAccount(ctx context.Context, expiry int64, now time.Time) (string, error) {
	if expiry <= now.Unix() {
		return "", ErrNotFound
	}
	var address string
	err := s.pool.QueryRow(ctx, `SELECT a.address FROM turn_credentials t JOIN accounts a USING (address)
		WHERE t.expiry = $1 AND NOT a.blocked`, expiry).Scan(&address)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", ErrNotFound
	}
	return address, err
}

// PurgeTurnCredentials removes the credentials expired at now and returns
// how many.
func (s *Store) PurgeTurnCredentials(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM turn_credentials WHERE expiry <= $1`, now.Unix())
	return tag.RowsAffected(), err
}
