package accounts_test

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/pgtest"
	"chatmail.dev/sidecar/turncred"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

func create(t *testing.T, s *accounts.Store, addr string) {
	t.Helper()
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	if _, _, err := s.Create(context.Background(), accounts.New{Address: addr, PasswordHash: "{PLAIN}x", Tombstone: key.Hash(addr)}); err != nil {
		t.Fatal(err)
	}
}

func TestTurnCredentials(t *testing.T) {
	ctx := context.Background()
	s, dsn := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	create(t, s, "bob@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	const lifetime = 120 * time.Hour

	a1, err := s.IssueTurnCredential(ctx, "alice@chat.test", now, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	// Valid for the lifetime give or take a day; the second within the day
	// says nothing about the time of the login.
	if d := time.Unix(a1, 0).Sub(now); d < lifetime-24*time.Hour || d > lifetime+24*time.Hour {
		t.Errorf("expires in %v", d)
	}
	if day := time.Unix(a1, 0).UTC().Truncate(24 * time.Hour); !day.Equal(now.Add(lifetime).Truncate(24 * time.Hour)) {
		t.Errorf("expiry %v not on the day of now+lifetime", time.Unix(a1, 0).UTC())
	}
	// Handed out again while more than the reuse margin is left...
	if again, err := s.IssueTurnCredential(ctx, "alice@chat.test", now.Add(3*24*time.Hour), lifetime); err != nil || again != a1 {
		t.Errorf("second login within the lifetime: %d, %v, want %d", again, err, a1)
	}
	// ...and replaced when less is.
	late := time.Unix(a1, 0).Add(-turncred.ReuseMargin + time.Minute)
	a2, err := s.IssueTurnCredential(ctx, "alice@chat.test", late, lifetime)
	if err != nil || a2 == a1 {
		t.Errorf("near expiry: %d, %v, want a new credential", a2, err)
	}
	b1, err := s.IssueTurnCredential(ctx, "bob@chat.test", now, lifetime)
	if err != nil || b1 == a1 {
		t.Fatalf("bob: %d, %v (alice has %d)", b1, err, a1)
	}
	if _, err := s.IssueTurnCredential(ctx, "carol@chat.test", now, lifetime); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("no account: %v, want ErrNotFound", err)
	}

	usable := func(expiry int64, at time.Time) bool {
		t.Helper()
		owner, err := s.TurnCredentialAccount(ctx, expiry, at)
		if errors.Is(err, accounts.ErrNotFound) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if want := map[int64]string{a1: "alice@chat.test", a2: "alice@chat.test", b1: "bob@chat.test"}[expiry]; owner != want {
			t.Errorf("credential %d belongs to %q, want %q", expiry, owner, want)
		}
		return true
	}
	if !usable(a1, now) || !usable(b1, now) || usable(a1+1, now) && usable(a1-1, now) {
		t.Error("issued credentials not usable, or neighbours usable")
	}
	if usable(a1, time.Unix(a1, 0)) {
		t.Error("usable at its expiry")
	}
	// Blocked: not usable, and no new one issued.
	if err := s.SetBlocked(ctx, "bob@chat.test", true); err != nil {
		t.Fatal(err)
	}
	if usable(b1, now) {
		t.Error("a blocked account's credential is usable")
	}
	if _, err := s.IssueTurnCredential(ctx, "bob@chat.test", now, lifetime); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("blocked account: %v, want ErrNotFound", err)
	}
	if err := s.SetBlocked(ctx, "bob@chat.test", false); err != nil || !usable(b1, now) {
		t.Errorf("unblocked: usable %v (%v)", usable(b1, now), err)
	}
	// Deleted: its credentials go with it.
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	if err := s.Delete(ctx, "alice@chat.test", key.Hash("alice@chat.test")); err != nil {
		t.Fatal(err)
	}
	if usable(a1, now) || usable(a2, now) {
		t.Error("a deleted account's credential is usable")
	}
	// Its seconds stay taken until they expire: a credential whose
	// password still verifies is never issued to another account.
	var left int
	if err := conn(t, dsn).QueryRow(ctx, `SELECT count(*) FROM turn_credentials WHERE address IS NULL AND expiry IN ($1, $2)`, a1, a2).Scan(&left); err != nil || left != 2 {
		t.Errorf("a deleted account's credentials: %d rows kept (%v), want 2", left, err)
	}
	if n, err := s.PurgeTurnCredentials(ctx, time.Unix(max(a1, a2, b1), 0)); err != nil || n != 3 {
		t.Errorf("purge: %d, %v", n, err)
	}
}

// Concurrent logins of many accounts within one second get credentials of
// their own; concurrent logins of one account get one.
func TestTurnCredentialsConcurrent(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	now := time.Now()
	const n = 40
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = "user" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "@chat.test"
		create(t, s, addrs[i])
	}
	got := make([]int64, 2*n)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() {
			e, err := s.IssueTurnCredential(ctx, addrs[i%n], now, 48*time.Hour)
			if err != nil {
				t.Error(err)
			}
			got[i] = e
		})
	}
	wg.Wait()
	owner := map[int64]string{}
	for i, e := range got {
		if o, ok := owner[e]; ok && o != addrs[i%n] {
			t.Fatalf("credential %d issued to two accounts", e)
		}
		owner[e] = addrs[i%n]
	}
	if len(owner) != n {
		t.Errorf("%d credentials for %d accounts", len(owner), n)
	}
}

// A day whose seconds are all taken but one gets that one; a full day
// spills into the next.
func TestTurnCredentialsCrowdedDay(t *testing.T) {
	ctx := context.Background()
	s, dsn := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	create(t, s, "bob@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	const lifetime = 48 * time.Hour
	start := now.Add(lifetime).Truncate(24 * time.Hour).Unix()
	conn := conn(t, dsn)
	const free = 4321
	if _, err := conn.Exec(ctx, `INSERT INTO turn_credentials (expiry, address)
		SELECT s, 'bob@chat.test' FROM generate_series($1::bigint, $1::bigint + 86399) s WHERE s <> $1::bigint + $2`, start, free); err != nil {
		t.Fatal(err)
	}
	if e, err := s.IssueTurnCredential(ctx, "alice@chat.test", now, lifetime); err != nil || e != start+free {
		t.Errorf("got %d, %v, want the one free second %d", e, err, start+free)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM turn_credentials WHERE address = 'alice@chat.test'`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO turn_credentials VALUES ($1::bigint + $2, 'bob@chat.test')`, start, free); err != nil {
		t.Fatal(err)
	}
	if e, err := s.IssueTurnCredential(ctx, "alice@chat.test", now, lifetime); err != nil || e < start+86400 || e >= start+2*86400 {
		t.Errorf("full day: got %d, %v, want a second of the next day", e, err)
	}
	// Every day it may spill into full too: none, and it says so.
	if _, err := conn.Exec(ctx, `DELETE FROM turn_credentials WHERE address = 'alice@chat.test'`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO turn_credentials (expiry, address)
		SELECT s, 'bob@chat.test' FROM generate_series($1::bigint + 86400, $1::bigint + 3 * 86400 - 1) s`, start); err != nil {
		t.Fatal(err)
	}
	if e, err := s.IssueTurnCredential(ctx, "alice@chat.test", now, lifetime); !errors.Is(err, accounts.ErrTurnCredentialsExhausted) {
		t.Errorf("three full days: got %d, %v, want ErrTurnCredentialsExhausted", e, err)
	}
}

// Handing a credential out again is a plain read: it neither waits for
// the account's row lock nor writes. Issuing one takes the lock.
func TestTurnCredentialReuseTakesNoLock(t *testing.T) {
	ctx := context.Background()
	s, dsn := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	create(t, s, "bob@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	const lifetime = 120 * time.Hour
	a1, err := s.IssueTurnCredential(ctx, "alice@chat.test", now, lifetime)
	if err != nil {
		t.Fatal(err)
	}
	// Another session holds both rows in a lock that conflicts with FOR NO
	// KEY UPDATE (an admin's block, say), and watches for writes.
	c := conn(t, dsn)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM accounts WHERE address IN ('alice@chat.test', 'bob@chat.test') FOR SHARE`); err != nil {
		t.Fatal(err)
	}
	var xmin0 string
	if err := conn(t, dsn).QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xmin0); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if again, err := s.IssueTurnCredential(short, "alice@chat.test", now.Add(24*time.Hour), lifetime); err != nil || again != a1 {
		t.Errorf("reuse while the row is locked: %d, %v, want %d at once", again, err, a1)
	}
	// No transaction id was taken meanwhile: nothing was written. (The
	// probe itself takes one: the next.)
	var xmin1 string
	if err := conn(t, dsn).QueryRow(ctx, `SELECT (pg_current_xact_id()::text::bigint - 1)::text`).Scan(&xmin1); err != nil {
		t.Fatal(err)
	}
	if xmin1 != xmin0 {
		t.Errorf("handing a credential out again wrote: transaction ids %s, then %s", xmin0, xmin1)
	}
	// Bob needs a new one: that waits for the lock.
	short2, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	if _, err := s.IssueTurnCredential(short2, "bob@chat.test", now, lifetime); err == nil {
		t.Error("issuing a new credential did not wait for the account's row lock")
	}
}

func conn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}
