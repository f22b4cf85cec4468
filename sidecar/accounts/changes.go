package accounts

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// changesChannel is the PostgreSQL NOTIFY channel on which every change of
// an account that a cache may hold (block, unblock, delete) is announced,
// with the normalized address as payload. The notification is sent in the
// transaction of the change, so it reaches the listeners exactly when the
// change commits, and never for a change that rolled back.
const changesChannel = "chatmail_account_changed"

// notifyChanged announces, within tx, that address changed.
func notifyChanged(ctx context.Context, tx pgx.Tx, address string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, changesChannel, address)
	return err
}

// ChangeHandler is what a cache of account state needs to hear from
// WatchChanges.
type ChangeHandler interface {
	// AccountChanged drops what is cached about one normalized address.
	AccountChanged(address string)
	// WatchingChanges says whether changes are heard from now on. While
	// they are not, a cache must not keep anything (drop all on false):
	// no notification would tell it of a deletion.
	WatchingChanges(on bool)
}

// Intervals of WatchChanges: how often the listening connection is checked
// while no notification comes (a dead peer shows up within this), and the
// longest wait before connecting again.
const (
	watchPing     = 10 * time.Second
	watchMaxDelay = 5 * time.Second
)

// WatchChanges listens for account changes on a connection of its own and
// reports them to h until ctx ends. While that connection is down it says
// so (h.WatchingChanges(false)) and connects again, so a cache falls back to
// reading the store. It returns when ctx ends.
func (s *Store) WatchChanges(ctx context.Context, h ChangeHandler, log *slog.Logger) {
	h.WatchingChanges(false)
	for delay := 100 * time.Millisecond; ; {
		start := time.Now()
		err := s.listen(ctx, h)
		h.WatchingChanges(false)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			delay = 100 * time.Millisecond
		}
		log.Warn("account change notifications interrupted, caching off until they resume", "err", err, "delay", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, watchMaxDelay)
	}
}

// listen runs one listening connection until it fails or ctx ends.
func (s *Store) listen(ctx context.Context, h ChangeHandler) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx) // abandoned either way; the next listen starts afresh
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+changesChannel); err != nil {
		return err
	}
	// Whatever was cached before this point may have missed a notification.
	h.WatchingChanges(true)
	for {
		wctx, cancel := context.WithTimeout(ctx, watchPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			if n.Channel == changesChannel {
				h.AccountChanged(n.Payload)
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case pgconn.Timeout(err) && !conn.IsClosed():
			pctx, cancel := context.WithTimeout(ctx, watchPing)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}
