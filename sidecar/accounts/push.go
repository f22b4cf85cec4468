package accounts

import (
	"context"
	"crypto/sha256"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
)

// Device tokens and the push queue (metadata-proxy). A token is opaque:
// the push gateway alone can read it. What is kept per account is bounded
// (MaxDeviceTokens, MaxDeviceTokenLength, one pending notification per
// token), so that an account cannot grow the database or make the server
// post without bound.
const (
	// MaxDeviceTokens is how many tokens an account keeps; setting one
	// more drops the least recently set.
	MaxDeviceTokens = 16
	// MaxDeviceTokenLength bounds a token in bytes. Delta Chat sends
	// "openpgp:" and the base64 of at most 4096 bytes.
	MaxDeviceTokenLength = 8192
	// DeviceTokenLifetime is how long a token lives after it was last
	// set. Delta Chat sets its token at every IMAP session, so a token
	// this old belongs to a device that stopped using the account.
	DeviceTokenLifetime = 90 * 24 * time.Hour
)

// ErrDeviceToken says a token is empty, too long, or holds more than
// printable ASCII without spaces (a GET returns the tokens space-joined).
var ErrDeviceToken = errors.New("device token empty, too long or not printable")

// ValidDeviceToken reports whether tok may be stored.
func ValidDeviceToken(tok string) bool {
	if tok == "" || len(tok) > MaxDeviceTokenLength {
		return false
	}
	for i := 0; i < len(tok); i++ {
		if tok[i] <= ' ' || tok[i] > '~' {
			return false
		}
	}
	return true
}

// utcDay is the day of t as the date columns hold it.
func utcDay(t time.Time) time.Time { return t.UTC().Truncate(24 * time.Hour) }

// tokenCutoff is the oldest last_set of a live token at now.
func tokenCutoff(now time.Time) time.Time { return utcDay(now).Add(-DeviceTokenLifetime) }

// SetDeviceToken adds tok to the tokens of the account of a normalized
// address, or marks it set today if it is there, and drops the least
// recently set beyond MaxDeviceTokens and the expired. ErrNotFound: no
// such account.
func (s *Store) SetDeviceToken(ctx context.Context, address, tok string, now time.Time) error {
	if !ValidDeviceToken(tok) {
		return ErrDeviceToken
	}
	digest := sha256.Sum256([]byte(tok))
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The row lock serializes the account's concurrent sets, so that
		// the bound holds, and orders the set against a deletion.
		var one int
		err := tx.QueryRow(ctx, `SELECT 1 FROM accounts WHERE address = $1 FOR NO KEY UPDATE`, address).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO device_tokens (address, token, digest, last_set) VALUES ($1, $2, $3, $4)
			ON CONFLICT (address, digest) DO UPDATE SET last_set = EXCLUDED.last_set
			WHERE device_tokens.last_set IS DISTINCT FROM EXCLUDED.last_set`,
			address, tok, digest[:], utcDay(now)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM device_tokens WHERE address = $1 AND (last_set < $2 OR id NOT IN (
			SELECT id FROM device_tokens WHERE address = $1 ORDER BY last_set DESC, id DESC LIMIT $3))`,
			address, tokenCutoff(now), MaxDeviceTokens)
		return err
	})
}

// DeleteDeviceTokens removes every token of an account, and with them its
// pending notifications.
func (s *Store) DeleteDeviceTokens(ctx context.Context, address string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM device_tokens WHERE address = $1`, address)
	return err
}

// DeviceTokens returns the live tokens of an account, in the order they
// were first set.
func (s *Store) DeviceTokens(ctx context.Context, address string, now time.Time) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT token FROM device_tokens WHERE address = $1 AND last_set >= $2 ORDER BY id`,
		address, tokenCutoff(now))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// PruneDeviceTokens removes the tokens not set for DeviceTokenLifetime,
// with their pending notifications, and returns how many.
func (s *Store) PruneDeviceTokens(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM device_tokens WHERE last_set < $1`, tokenCutoff(now))
	return tag.RowsAffected(), err
}

// QueuePushes queues a notification for each live token of an account
// that has none pending, and asks for one more of those whose
// notification is being posted right now (the new mail may have come
// after the gateway was told). It returns how many tokens it queued or
// asked again for.
func (s *Store) QueuePushes(ctx context.Context, address string, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO push_queue (token_id, queued_at, next_attempt)
		SELECT id, $2, $2 FROM device_tokens WHERE address = $1 AND last_set >= $3
		ON CONFLICT (token_id) DO UPDATE SET again = true WHERE push_queue.in_flight AND NOT push_queue.again`,
		address, now, tokenCutoff(now))
	return tag.RowsAffected(), err
}

// Push is a notification a worker claimed: it posts Token, then settles
// the claim with PushDelivered, PushGone, RetryPush or DropPush.
type Push struct {
	TokenID int64
	Claim   int64
	Token   string
	// Attempts is how many attempts failed before this one.
	Attempts int
	// QueuedAt is when the notification was first queued.
	QueuedAt time.Time
}

// ClaimPushes claims up to limit notifications due at now that no other
// worker holds, for lease: until now+lease no one else claims them, and
// after it anyone may (the holder died). Rows other workers are claiming
// are skipped, not waited for.
func (s *Store) ClaimPushes(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Push, error) {
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT token_id FROM push_queue WHERE next_attempt <= $1
			ORDER BY next_attempt LIMIT $3 FOR UPDATE SKIP LOCKED)
		UPDATE push_queue q SET next_attempt = $2, claim = q.claim + 1, in_flight = true
		FROM due, device_tokens t WHERE q.token_id = due.token_id AND t.id = q.token_id
		RETURNING q.token_id, q.claim, t.token, q.attempts, q.queued_at`,
		now, now.Add(lease), limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Push, error) {
		var p Push
		err := r.Scan(&p.TokenID, &p.Claim, &p.Token, &p.Attempts, &p.QueuedAt)
		return p, err
	})
}

// PushDelivered settles a claim whose notification the gateway took: the
// row goes, unless new mail asked for one more meanwhile; then it is due
// again at now, as a new notification.
func (s *Store) PushDelivered(ctx context.Context, p Push, now time.Time) error {
	_, err := s.pool.Exec(ctx, `WITH gone AS (
			DELETE FROM push_queue WHERE token_id = $1 AND claim = $2 AND NOT again RETURNING 1)
		UPDATE push_queue SET again = false, in_flight = false, attempts = 0, queued_at = $3, next_attempt = $3
		WHERE token_id = $1 AND claim = $2 AND again`, p.TokenID, p.Claim, now)
	return err
}

// PushGone removes the token of a claim, which the gateway says is no
// longer valid, and with it the notification.
func (s *Store) PushGone(ctx context.Context, p Push) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM device_tokens WHERE id = $1`, p.TokenID)
	return err
}

// RetryPush settles a failed claim: the next attempt is at at.
func (s *Store) RetryPush(ctx context.Context, p Push, at time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE push_queue SET next_attempt = $3, attempts = attempts + 1, in_flight = false, again = false
		WHERE token_id = $1 AND claim = $2`, p.TokenID, p.Claim, at)
	return err
}

// DropPush settles a claim by giving the notification up.
func (s *Store) DropPush(ctx context.Context, p Push) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM push_queue WHERE token_id = $1 AND claim = $2`, p.TokenID, p.Claim)
	return err
}

// NextPushDue returns the due time of the earliest notification, and
// false when none is queued.
func (s *Store) NextPushDue(ctx context.Context) (time.Time, bool, error) {
	var t *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT min(next_attempt) FROM push_queue`).Scan(&t); err != nil || t == nil {
		return time.Time{}, false, err
	}
	return *t, true, nil
}
