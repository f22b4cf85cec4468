package accounts_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/pgtest"
)

func tokensOf(t *testing.T, s *accounts.Store, addr string, now time.Time) []string {
	t.Helper()
	toks, err := s.DeviceTokens(context.Background(), addr, now)
	if err != nil {
		t.Fatal(err)
	}
	return toks
}

func TestDeviceTokens(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	create(t, s, "bob@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)

	for _, tok := range []string{"1111", "2222", "1111"} {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", tok, now); err != nil {
			t.Fatal(err)
		}
	}
	if got := tokensOf(t, s, "alice@chat.test", now); !slices.Equal(got, []string{"1111", "2222"}) {
		t.Errorf("alice's tokens %q, want 1111 2222 (deduplicated, in order)", got)
	}
	if got := tokensOf(t, s, "bob@chat.test", now); len(got) != 0 {
		t.Errorf("bob sees %q", got)
	}
	// The same token for another account is another row.
	if err := s.SetDeviceToken(ctx, "bob@chat.test", "1111", now); err != nil {
		t.Fatal(err)
	}
	if got := tokensOf(t, s, "bob@chat.test", now); !slices.Equal(got, []string{"1111"}) {
		t.Errorf("bob's tokens %q", got)
	}
	if err := s.SetDeviceToken(ctx, "nobody@chat.test", "1111", now); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("token of a missing account: %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "a b", "tab\there", "caf\u00e9", strings.Repeat("x", accounts.MaxDeviceTokenLength+1)} {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", bad, now); !errors.Is(err, accounts.ErrDeviceToken) {
			t.Errorf("token %.20q: %v, want ErrDeviceToken", bad, err)
		}
	}
	long := "openpgp:" + strings.Repeat("A", accounts.MaxDeviceTokenLength-8)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", long, now); err != nil {
		t.Errorf("token of the longest length: %v", err)
	}
	if got := tokensOf(t, s, "alice@chat.test", now); len(got) != 3 || got[2] != long {
		t.Errorf("after the long token: %d tokens", len(got))
	}

	if err := s.DeleteDeviceTokens(ctx, "alice@chat.test"); err != nil {
		t.Fatal(err)
	}
	if got := tokensOf(t, s, "alice@chat.test", now); len(got) != 0 {
		t.Errorf("after DeleteDeviceTokens: %q", got)
	}
	if got := tokensOf(t, s, "bob@chat.test", now); len(got) != 1 {
		t.Errorf("alice's delete touched bob's tokens: %q", got)
	}
}

// An account keeps MaxDeviceTokens; the least recently set go first.
func TestDeviceTokensBounded(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	day0 := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for i := range accounts.MaxDeviceTokens {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", fmt.Sprint("tok", i), day0); err != nil {
			t.Fatal(err)
		}
	}
	// tok0 is set again a day later: tok1 is now the least recently set.
	day1 := day0.Add(24 * time.Hour)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "tok0", day1); err != nil {
		t.Fatal(err)
	}
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "new", day1); err != nil {
		t.Fatal(err)
	}
	got := tokensOf(t, s, "alice@chat.test", day1)
	if len(got) != accounts.MaxDeviceTokens || slices.Contains(got, "tok1") || !slices.Contains(got, "tok0") || got[len(got)-1] != "new" {
		t.Errorf("tokens after one too many: %q", got)
	}
	// Many more: still the bound.
	for i := range 40 {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", fmt.Sprint("more", i), day1); err != nil {
			t.Fatal(err)
		}
	}
	if got := tokensOf(t, s, "alice@chat.test", day1); len(got) != accounts.MaxDeviceTokens || got[len(got)-1] != "more39" {
		t.Errorf("%d tokens kept, last %q", len(got), got[len(got)-1])
	}
}

// A token expires DeviceTokenLifetime after it was last set: invisible
// at once, removed by PruneDeviceTokens.
func TestDeviceTokensExpire(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	day0 := time.Date(2026, 1, 1, 23, 0, 0, 0, time.UTC)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "old", day0); err != nil {
		t.Fatal(err)
	}
	later := day0.Add(60 * 24 * time.Hour)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "young", later); err != nil {
		t.Fatal(err)
	}
	last := day0.Add(accounts.DeviceTokenLifetime)
	if got := tokensOf(t, s, "alice@chat.test", last); !slices.Equal(got, []string{"old", "young"}) {
		t.Errorf("on the last day: %q", got)
	}
	after := last.Add(24 * time.Hour)
	if got := tokensOf(t, s, "alice@chat.test", after); !slices.Equal(got, []string{"young"}) {
		t.Errorf("after expiry: %q", got)
	}
	if n, err := s.QueuePushes(ctx, "alice@chat.test", after); err != nil || n != 1 {
		t.Errorf("QueuePushes after expiry: %d, %v; want 1 (the young token only)", n, err)
	}
	if n, err := s.PruneDeviceTokens(ctx, after); err != nil || n != 1 {
		t.Errorf("PruneDeviceTokens: %d, %v; want 1", n, err)
	}
	if n, err := s.PruneDeviceTokens(ctx, after); err != nil || n != 0 {
		t.Errorf("PruneDeviceTokens again: %d, %v", n, err)
	}
}

func claim(t *testing.T, s *accounts.Store, now time.Time, limit int) []accounts.Push {
	t.Helper()
	ps, err := s.ClaimPushes(context.Background(), now, time.Minute, limit)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func TestPushQueue(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	create(t, s, "bob@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	for _, tok := range []string{"a1", "a2"} {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", tok, now); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.QueuePushes(ctx, "bob@chat.test", now); err != nil || n != 0 {
		t.Errorf("bob without tokens: %d queued, %v", n, err)
	}
	if _, ok, err := s.NextPushDue(ctx); ok || err != nil {
		t.Errorf("NextPushDue of an empty queue: %v, %v", ok, err)
	}
	// New mail while a notification is pending adds nothing.
	for i, want := range []int64{2, 0, 0} {
		if n, err := s.QueuePushes(ctx, "alice@chat.test", now.Add(time.Duration(i)*time.Second)); err != nil || n != want {
			t.Errorf("QueuePushes #%d: %d, %v; want %d", i, n, err, want)
		}
	}
	if due, ok, err := s.NextPushDue(ctx); err != nil || !ok || !due.Equal(now) {
		t.Errorf("NextPushDue = %v %v %v, want %v", due, ok, err, now)
	}
	if ps := claim(t, s, now.Add(-time.Second), 10); len(ps) != 0 {
		t.Errorf("claimed %d before they were due", len(ps))
	}
	ps := claim(t, s, now, 10)
	if len(ps) != 2 || !slices.Contains([]string{"a1", "a2"}, ps[0].Token) || ps[0].Attempts != 0 || !ps[0].QueuedAt.Equal(now) {
		t.Fatalf("claimed %+v", ps)
	}
	// Held: nobody else gets them until the lease ends.
	if again := claim(t, s, now.Add(30*time.Second), 10); len(again) != 0 {
		t.Errorf("claimed %d held rows", len(again))
	}
	byToken := map[string]accounts.Push{}
	for _, p := range ps {
		byToken[p.Token] = p
	}
	// a1 delivered; a2 failed, retried in 8 s.
	if err := s.PushDelivered(ctx, byToken["a1"], now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryPush(ctx, byToken["a2"], now.Add(9*time.Second)); err != nil {
		t.Fatal(err)
	}
	if due, _, _ := s.NextPushDue(ctx); !due.Equal(now.Add(9 * time.Second)) {
		t.Errorf("next due %v, want the retry", due)
	}
	// New mail for a2, pending for retry: still one row, the retry time kept.
	if n, _ := s.QueuePushes(ctx, "alice@chat.test", now.Add(2*time.Second)); n != 1 {
		t.Errorf("new mail after a1's delivery queued %d, want 1 (a1 again)", n)
	}
	ps = claim(t, s, now.Add(9*time.Second), 10)
	if len(ps) != 2 {
		t.Fatalf("claimed %d, want a1 and a2", len(ps))
	}
	for _, p := range ps {
		if p.Token == "a2" && (p.Attempts != 1 || !p.QueuedAt.Equal(now)) {
			t.Errorf("retried claim %+v: want attempts 1, queued at the first queueing", p)
		}
		byToken[p.Token] = p
	}
	// The gateway says a2 is gone: the token goes, with its notification.
	if err := s.PushGone(ctx, byToken["a2"]); err != nil {
		t.Fatal(err)
	}
	if got := tokensOf(t, s, "alice@chat.test", now); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("tokens after 410: %q", got)
	}
	if err := s.DropPush(ctx, byToken["a1"]); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("queue not empty after delivery, gone and drop")
	}
}

// A worker that dies holding a claim: after the lease another claims the
// row, and the first can no longer settle it.
func TestPushLease(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "tok", now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.QueuePushes(ctx, "alice@chat.test", now); err != nil {
		t.Fatal(err)
	}
	first := claim(t, s, now, 1)
	if len(first) != 1 {
		t.Fatalf("claimed %d", len(first))
	}
	if again := claim(t, s, now.Add(59*time.Second), 1); len(again) != 0 {
		t.Fatal("claimed within the lease")
	}
	second := claim(t, s, now.Add(time.Minute), 1)
	if len(second) != 1 || second[0].Claim == first[0].Claim {
		t.Fatalf("after the lease: %+v", second)
	}
	// The stale holder's settlements do nothing.
	if err := s.PushDelivered(ctx, first[0], now); err != nil {
		t.Fatal(err)
	}
	if err := s.DropPush(ctx, first[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryPush(ctx, first[0], now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if due, ok, _ := s.NextPushDue(ctx); !ok || !due.Equal(now.Add(2*time.Minute)) {
		t.Errorf("row after stale settlements: due %v %v, want the second lease's end", due, ok)
	}
	if err := s.PushDelivered(ctx, second[0], now); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("the holder's delivery left the row")
	}
}

// New mail while a notification is being posted asks for one more after
// it; more new mail meanwhile still only one.
func TestPushAgain(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "tok", now); err != nil {
		t.Fatal(err)
	}
	s.QueuePushes(ctx, "alice@chat.test", now)
	p := claim(t, s, now, 1)
	for i, want := range []int64{1, 0, 0} {
		if n, err := s.QueuePushes(ctx, "alice@chat.test", now.Add(time.Second)); err != nil || n != want {
			t.Errorf("new mail #%d while in flight: %d, %v; want %d", i, n, err, want)
		}
	}
	later := now.Add(2 * time.Second)
	if err := s.PushDelivered(ctx, p[0], later); err != nil {
		t.Fatal(err)
	}
	q := claim(t, s, later, 5)
	if len(q) != 1 || q[0].Attempts != 0 || !q[0].QueuedAt.Equal(later) {
		t.Fatalf("after delivery with new mail in between: %+v, want one fresh notification", q)
	}
	if err := s.PushDelivered(ctx, q[0], later); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("a third notification")
	}
}

// Two workers claiming at once never get the same row.
func TestPushClaimsDisjoint(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	for i := range 8 {
		addr := fmt.Sprintf("user%d@chat.test", i)
		create(t, s, addr)
		for j := range 5 {
			if err := s.SetDeviceToken(ctx, addr, fmt.Sprint("t", i, "-", j), now); err != nil {
				t.Fatal(err)
			}
		}
		s.QueuePushes(ctx, addr, now)
	}
	results := make(chan []accounts.Push, 8)
	for range 8 {
		go func() {
			var all []accounts.Push
			for {
				ps, err := s.ClaimPushes(ctx, now, time.Minute, 3)
				if err != nil {
					t.Error(err)
				}
				if len(ps) == 0 {
					break
				}
				all = append(all, ps...)
			}
			results <- all
		}()
	}
	seen := map[int64]bool{}
	for range 8 {
		for _, p := range <-results {
			if seen[p.TokenID] {
				t.Errorf("token %d claimed twice", p.TokenID)
			}
			seen[p.TokenID] = true
		}
	}
	if len(seen) != 40 {
		t.Errorf("%d claimed, want 40", len(seen))
	}
}

// Deleting an account removes its tokens and their notifications.
func TestDeviceTokensGoWithAccount(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	now := time.Now()
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "tok", now); err != nil {
		t.Fatal(err)
	}
	s.QueuePushes(ctx, "alice@chat.test", now)
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	if err := s.Delete(ctx, "alice@chat.test", key.Hash("alice@chat.test")); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("a deleted account's notification stays queued")
	}
	create(t, s, "bob@chat.test")
	if got := tokensOf(t, s, "alice@chat.test", now); len(got) != 0 {
		t.Errorf("a deleted account's tokens: %q", got)
	}
}
