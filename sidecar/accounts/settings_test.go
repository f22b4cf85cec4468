package accounts

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestNoLogValue(t *testing.T) {
	for _, c := range []struct {
		v       string
		err     error
		want    bool
		wantErr bool
	}{
		{"on", nil, true, false},
		{"off", nil, false, false},
		{"yes", nil, true, false},
		{"", pgx.ErrNoRows, true, false},
		{"", errors.New("down"), true, true},
	} {
		on, err := noLogValue(c.v, c.err)
		if on != c.want || (err != nil) != c.wantErr {
			t.Errorf("noLogValue(%q, %v) = %v, %v; want %v, error %v", c.v, c.err, on, err, c.want, c.wantErr)
		}
	}
}

// fakeDB is the settings table and its channel, with a switch for the
// database being reachable.
type fakeDB struct {
	mu      sync.Mutex
	value   bool
	down    bool
	listens []chan struct{}
}

func (db *fakeDB) set(on, notify bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.value = on
	if notify {
		for _, c := range db.listens {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
}

func (db *fakeDB) setDown(down bool) {
	db.mu.Lock()
	defer db.mu.Unlock()
	db.down = down
}

func (db *fakeDB) dial(context.Context) (noLogConn, error) {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.down {
		return nil, errors.New("connection refused")
	}
	return &fakeConn{db: db, notes: make(chan struct{}, 1)}, nil
}

type fakeConn struct {
	db    *fakeDB
	notes chan struct{}
}

func (c *fakeConn) Listen(context.Context) error {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	c.db.listens = append(c.db.listens, c.notes)
	return nil
}

func (c *fakeConn) Read(context.Context) (bool, error) {
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	if c.db.down {
		return false, io.ErrUnexpectedEOF
	}
	return c.db.value, nil
}

func (c *fakeConn) Wait(ctx context.Context, d time.Duration) (bool, error) {
	select {
	case <-c.notes:
		return true, nil
	case <-time.After(d):
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func (c *fakeConn) Close() {}

// follower runs watchNoLog over db and records what it applies.
type follower struct {
	mu       sync.Mutex
	applied  []bool
	failures int
}

func (f *follower) last() (bool, int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.applied) == 0 {
		return false, 0, f.failures
	}
	return f.applied[len(f.applied)-1], len(f.applied), f.failures
}

func follow(t *testing.T, db *fakeDB, every time.Duration) *follower {
	f := &follower{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watchNoLog(ctx, db.dial,
			func(on bool) { f.mu.Lock(); f.applied = append(f.applied, on); f.mu.Unlock() },
			func(error) { f.mu.Lock(); f.failures++; f.mu.Unlock() },
			slog.New(slog.NewTextHandler(io.Discard, nil)), every)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(within); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWatchNoLogNotified(t *testing.T) {
	db := &fakeDB{value: true}
	f := follow(t, db, time.Hour) // no re-read: only notifications count
	waitFor(t, time.Second, "first reading", func() bool { on, n, _ := f.last(); return n == 1 && on })
	db.set(false, true)
	waitFor(t, time.Second, "off after the notification", func() bool { on, _, _ := f.last(); return !on })
	db.set(true, true)
	waitFor(t, time.Second, "on after the notification", func() bool { on, _, _ := f.last(); return on })
}

func TestWatchNoLogReread(t *testing.T) {
	db := &fakeDB{value: true}
	f := follow(t, db, 50*time.Millisecond)
	waitFor(t, time.Second, "first reading", func() bool { on, n, _ := f.last(); return n >= 1 && on })
	db.set(false, false) // the notification is lost
	waitFor(t, time.Second, "off by the periodic re-read", func() bool { on, _, _ := f.last(); return !on })
}

func TestWatchNoLogUnreachable(t *testing.T) {
	db := &fakeDB{value: false, down: true}
	f := follow(t, db, 50*time.Millisecond)
	waitFor(t, time.Second, "failures reported", func() bool { _, _, fails := f.last(); return fails >= 2 })
	if _, n, _ := f.last(); n != 0 {
		t.Fatal("a value was applied while the database was unreachable")
	}
	db.setDown(false)
	waitFor(t, 2*time.Second, "reading after reconnecting", func() bool { on, n, _ := f.last(); return n >= 1 && !on })

	// Down again: nothing is applied, so the last known value stays.
	db.setDown(true)
	_, before, fails := f.last()
	waitFor(t, 2*time.Second, "the failure noticed", func() bool { _, _, now := f.last(); return now > fails })
	db.set(true, false)
	time.Sleep(150 * time.Millisecond)
	if _, n, _ := f.last(); n != before {
		t.Fatalf("%d values applied while the database was down", n-before)
	}
	db.setDown(false)
	waitFor(t, 2*time.Second, "on after the database came back", func() bool { on, _, _ := f.last(); return on })
}
