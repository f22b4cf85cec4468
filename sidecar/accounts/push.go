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
// (MaxDeviceTokens, MaxDeviceTokenLength, one queue row per token), and
// so is how often a token is posted (the cooldown of PushDone), so that an
// account, or mail from anyone to it, cannot grow the database or make the
// server post without bound.
const (
	// MaxDeviceTokens is how many tokens an account keeps; setting one
	// more drops the least recently set. Each is posted on new mail: a
	// mail to 50 recipients makes at most 400 POSTs, then none per token
	// until its cooldown ends.
	MaxDeviceTokens = 8
	// MaxDeviceTokenLength bounds a token in bytes. Delta Chat sends
	// "openpgp:" and the base64 of at most 4096 bytes: 5,472.
	MaxDeviceTokenLength = 6000
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
// that has no row in the queue, and asks for one more for those whose
// notification is being posted right now (the new mail may have come after
// the gateway was told) or that are cooling down after one (PushDone):
// that one is posted when the cooldown ends. A token with a notification
// pending already gets nothing more. It returns how many tokens it queued
// or asked again for.
func (s *Store) QueuePushes(ctx context.Context, address string, now time.Time) (int64, error) {
	// A cooling row's queued_at becomes the time of the mail it now
	// waits for: push_give_up counts from there.
	tag, err := s.pool.Exec(ctx, `INSERT INTO push_queue (token_id, queued_at, next_attempt)
		SELECT id, $2, $2 FROM device_tokens WHERE address = $1 AND last_set >= $3
		ON CONFLICT (token_id) DO UPDATE SET again = true,
			queued_at = CASE WHEN push_queue.cooling THEN EXCLUDED.queued_at ELSE push_queue.queued_at END
		WHERE (push_queue.in_flight OR push_queue.cooling) AND NOT push_queue.again`,
		address, now, tokenCutoff(now))
	return tag.RowsAffected(), err
}

// Push is a notification a worker claimed: it posts Token, then settles
// the claim with PushDone, PushGone, RetryPush or DropPush.
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
// are skipped, not waited for. Cooldowns that ended with no new mail
// meanwhile end here: their rows go, without a POST.
func (s *Store) ClaimPushes(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Push, error) {
	// FOR UPDATE rechecks the condition on a row that new mail changed
	// meanwhile: a cooldown that QueuePushes just asked again for stays.
	if _, err := s.pool.Exec(ctx, `DELETE FROM push_queue WHERE token_id IN (
			SELECT token_id FROM push_queue WHERE next_attempt <= $1 AND cooling AND NOT again
			FOR UPDATE SKIP LOCKED)`, now); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT token_id FROM push_queue WHERE next_attempt <= $1 AND (again OR NOT cooling)
			ORDER BY next_attempt LIMIT $3 FOR UPDATE SKIP LOCKED)
		UPDATE push_queue q SET next_attempt = $2, claim = q.claim + 1, in_flight = true, cooling = false, again = false
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

// PushDone settles a claim whose notification is over: the gateway took
// it, or refused it for good. The token is not posted again for cooldown:
// its row stays, as a marker, until now+cooldown. New mail meanwhile
// (QueuePushes) makes it one notification, due when the cooldown ends;
// without any, the row goes then (ClaimPushes). Nothing outlives the
// cooldown: the store keeps no time a token was last posted.
func (s *Store) PushDone(ctx context.Context, p Push, now time.Time, cooldown time.Duration) error {
	_, err := s.pool.Exec(ctx, `UPDATE push_queue SET in_flight = false, cooling = true, attempts = 0, queued_at = $3, next_attempt = $4
		WHERE token_id = $1 AND claim = $2`, p.TokenID, p.Claim, now, now.Add(max(cooldown, 0)))
	return err
}

// PushGone removes the token of a claim, which the gateway says is no
// longer valid, and with it the notification.
func (s *Store) PushGone(ctx context.Context, p Push) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM device_tokens WHERE id = $1`, p.TokenID)
	return err
}

// RetryPush settles a failed claim: the next attempt is at at. New mail
// while it was in flight needs nothing more: the retry tells the gateway.
func (s *Store) RetryPush(ctx context.Context, p Push, at time.Time) error {
	_, err := s.pool.Exec(ctx, `UPDATE push_queue SET next_attempt = $3, attempts = attempts + 1, in_flight = false, again = false
		WHERE token_id = $1 AND claim = $2`, p.TokenID, p.Claim, at)
	return err
}

// DropPush settles a claim by giving the notification up: the row goes.
func (s *Store) DropPush(ctx context.Context, p Push) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM push_queue WHERE token_id = $1 AND claim = $2`, p.TokenID, p.Claim)
	return err
}

// NextPushDue returns when a worker has something to do next (a
// notification due, a lease or a cooldown ending), and false when the
// queue is empty.
func (s *Store) NextPushDue(ctx context.Context) (time.Time, bool, error) {
	var t *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT min(next_attempt) FROM push_queue`).Scan(&t); err != nil || t == nil {
		return time.Time{}, false, err
	}
	return *t, true, nil
}
