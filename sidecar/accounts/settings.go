package accounts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The No-Log switch lives in the settings table (migration 004), so that
// every daemon on every node sharing the database follows one switch.
// A change is announced on settingsChannel with the key as payload, in the
// transaction of the change.
const (
	settingsChannel = "chatmail_settings_changed"
	noLogKey        = "nolog"
)

// NoLogFollow bounds how long a daemon watching the switch may lag behind
// it when notifications are lost: the periodic re-read. The longest wait
// before connecting again after a failure is the same.
const NoLogFollow = 5 * time.Second

// noLogValue maps the stored value to the switch. Anything but "off",
// including a missing row, counts as on: failing towards privacy.
func noLogValue(v string, err error) (bool, error) {
	if errors.Is(err, pgx.ErrNoRows) {
		return true, nil
	}
	if err != nil {
		return true, err
	}
	return v != "off", nil
}

const selectNoLog = `SELECT value FROM settings WHERE key = '` + noLogKey + `'`

// NoLog reads the No-Log switch.
func (s *Store) NoLog(ctx context.Context) (bool, error) {
	var v string
	err := s.pool.QueryRow(ctx, selectNoLog).Scan(&v)
	return noLogValue(v, err)
}

// SetNoLog switches No-Log for every daemon and announces it, in one
// transaction.
func (s *Store) SetNoLog(ctx context.Context, on bool) error {
	v := "off"
	if on {
		v = "on"
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2)
			ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value`, noLogKey, v); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, settingsChannel, noLogKey)
		return err
	})
	if err != nil {
		return fmt.Errorf("nolog: %w", err)
	}
	return nil
}

// noLogConn is what WatchNoLog needs of one database connection.
type noLogConn interface {
	// Listen subscribes to settings changes.
	Listen(ctx context.Context) error
	// Read returns the switch.
	Read(ctx context.Context) (bool, error)
	// Wait waits up to d for a change notification: true if one came,
	// false on the timeout, an error if the connection failed.
	Wait(ctx context.Context, d time.Duration) (bool, error)
	Close()
}

// WatchNoLog follows the No-Log switch in the database of dsn until ctx
// ends, calling apply with its value after every read: at once when it
// changes (LISTEN on a connection of its own) and every NoLogFollow in any
// case. While the database cannot be read, apply is not called, so the
// caller keeps the last known value; the watcher connects again with
// backoff. failed, if not nil, is called on every failed attempt (so a
// caller waiting for a first value can stop waiting).
func WatchNoLog(ctx context.Context, dsn string, apply func(on bool), failed func(error), log *slog.Logger) error {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("postgres dsn: %w", err)
	}
	cfg.ConnectTimeout = 2 * time.Second
	dial := func(ctx context.Context) (noLogConn, error) {
		c, err := pgx.ConnectConfig(ctx, cfg.Copy())
		if err != nil {
			return nil, err
		}
		return pgNoLogConn{c}, nil
	}
	watchNoLog(ctx, dial, apply, failed, log, NoLogFollow)
	return nil
}

func watchNoLog(ctx context.Context, dial func(context.Context) (noLogConn, error), apply func(bool), failed func(error), log *slog.Logger, every time.Duration) {
	for delay := 100 * time.Millisecond; ; {
		start := time.Now()
		err := followNoLog(ctx, dial, apply, every)
		if ctx.Err() != nil {
			return
		}
		if failed != nil {
			failed(err)
		}
		if time.Since(start) > time.Minute {
			delay = 100 * time.Millisecond
		}
		log.Warn("cannot read the No-Log switch, keeping the last known mode", "err", err, "delay", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, every)
	}
}

// followNoLog runs one connection until it fails or ctx ends.
func followNoLog(ctx context.Context, dial func(context.Context) (noLogConn, error), apply func(bool), every time.Duration) error {
	conn, err := dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	// Listen before reading, so no change falls between the two.
	if err := conn.Listen(ctx); err != nil {
		return err
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, every)
		on, err := conn.Read(rctx)
		cancel()
		if err != nil {
			return err
		}
		apply(on)
		if _, err := conn.Wait(ctx, every); err != nil {
			return err
		}
	}
}

type pgNoLogConn struct{ c *pgx.Conn }

func (p pgNoLogConn) Listen(ctx context.Context) error {
	_, err := p.c.Exec(ctx, `LISTEN `+settingsChannel)
	return err
}

func (p pgNoLogConn) Read(ctx context.Context) (bool, error) {
	var v string
	err := p.c.QueryRow(ctx, selectNoLog).Scan(&v)
	return noLogValue(v, err)
}

func (p pgNoLogConn) Wait(ctx context.Context, d time.Duration) (bool, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, err := p.c.WaitForNotification(wctx)
	switch {
	case err == nil:
		return true, nil
	case ctx.Err() != nil:
		return false, ctx.Err()
	case pgconn.Timeout(err) && !p.c.IsClosed():
		return false, nil
	}
	return false, err
}

func (p pgNoLogConn) Close() {
	cctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.c.Close(cctx) // abandoned either way; the next attempt starts afresh
}
