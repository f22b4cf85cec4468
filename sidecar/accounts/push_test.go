package accounts_test

import (
	"context"
	"encoding/base64"
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

// The bounds themselves: 8 tokens an account, 6000 bytes a token, which
// holds Delta Chat's longest ("openpgp:" and the base64 of 4096 bytes).
func TestDeviceTokenBounds(t *testing.T) {
	ctx := context.Background()
	s, _ := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	deltachat := "openpgp:" + base64.StdEncoding.EncodeToString(make([]byte, 4096))
	if len(deltachat) != 5472 || !accounts.ValidDeviceToken(deltachat) {
		t.Errorf("Delta Chat's longest token (%d bytes) refused", len(deltachat))
	}
	if !accounts.ValidDeviceToken(strings.Repeat("x", 6000)) || accounts.ValidDeviceToken(strings.Repeat("x", 6001)) {
		t.Error("the bound of a token is not 6000 bytes")
	}
	for i := range 12 {
		if err := s.SetDeviceToken(ctx, "alice@chat.test", fmt.Sprint("tok", i), now); err != nil {
			t.Fatal(err)
		}
	}
	if got := tokensOf(t, s, "alice@chat.test", now); len(got) != 8 || got[0] != "tok4" {
		t.Errorf("after 12 tokens the account keeps %q, want the last 8", got)
	}
	if n, err := s.QueuePushes(ctx, "alice@chat.test", now); err != nil || n != 8 {
		t.Errorf("new mail queued %d (%v), want 8", n, err)
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
	// a1 delivered, cooling down for 30 s; a2 failed, retried in 8 s.
	if err := s.PushDone(ctx, byToken["a1"], now.Add(time.Second), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.RetryPush(ctx, byToken["a2"], now.Add(9*time.Second)); err != nil {
		t.Fatal(err)
	}
	if due, _, _ := s.NextPushDue(ctx); !due.Equal(now.Add(9 * time.Second)) {
		t.Errorf("next due %v, want the retry", due)
	}
	// New mail for a2, pending for retry: still one row, the retry time
	// kept; for a1, cooling down: one more, when the cooldown ends.
	if n, _ := s.QueuePushes(ctx, "alice@chat.test", now.Add(2*time.Second)); n != 1 {
		t.Errorf("new mail after a1's delivery queued %d, want 1 (a1 again)", n)
	}
	ps = claim(t, s, now.Add(9*time.Second), 10)
	if len(ps) != 1 || ps[0].Token != "a2" || ps[0].Attempts != 1 || !ps[0].QueuedAt.Equal(now) {
		t.Fatalf("claimed %+v, want a2's retry: attempts 1, queued at the first queueing", ps)
	}
	// The gateway says a2 is gone: the token goes, with its notification.
	if err := s.PushGone(ctx, ps[0]); err != nil {
		t.Fatal(err)
	}
	if got := tokensOf(t, s, "alice@chat.test", now); !slices.Equal(got, []string{"a1"}) {
		t.Errorf("tokens after 410: %q", got)
	}
	ps = claim(t, s, now.Add(31*time.Second), 10)
	if len(ps) != 1 || ps[0].Token != "a1" || ps[0].Attempts != 0 || !ps[0].QueuedAt.Equal(now.Add(2*time.Second)) {
		t.Fatalf("at the end of a1's cooldown claimed %+v, want a1, queued when the mail came", ps)
	}
	if err := s.DropPush(ctx, ps[0]); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("queue not empty after delivery, gone and drop")
	}
}

// After a notification is done, its token is not posted again for the
// cooldown: mail meanwhile makes one notification, due when the cooldown
// ends; without mail the row goes then, unposted, and nothing is left.
func TestPushCooldown(t *testing.T) {
	ctx := context.Background()
	s, dsn := pgtest.Store(t)
	create(t, s, "alice@chat.test")
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	if err := s.SetDeviceToken(ctx, "alice@chat.test", "tok", now); err != nil {
		t.Fatal(err)
	}
	const cooldown = 30 * time.Second
	at := func(d time.Duration) time.Time { return now.Add(d) }
	if n, err := s.QueuePushes(ctx, "alice@chat.test", now); err != nil || n != 1 {
		t.Fatalf("QueuePushes: %d, %v", n, err)
	}
	p := claim(t, s, now, 1)
	if len(p) != 1 {
		t.Fatal("nothing claimed")
	}
	if err := s.PushDone(ctx, p[0], at(time.Second), cooldown); err != nil {
		t.Fatal(err)
	}
	if due, ok, _ := s.NextPushDue(ctx); !ok || !due.Equal(at(31*time.Second)) {
		t.Errorf("after delivery: next due %v %v, want the cooldown's end", due, ok)
	}
	if ps := claim(t, s, at(10*time.Second), 5); len(ps) != 0 {
		t.Errorf("claimed %d within the cooldown, nothing queued", len(ps))
	}
	// Mail within the cooldown: one notification, however many mails.
	for i, want := range []int64{1, 0, 0} {
		if n, err := s.QueuePushes(ctx, "alice@chat.test", at(time.Duration(10+i)*time.Second)); err != nil || n != want {
			t.Errorf("mail #%d within the cooldown: %d, %v; want %d", i, n, err, want)
		}
	}
	if ps := claim(t, s, at(30*time.Second), 5); len(ps) != 0 {
		t.Errorf("claimed %d before the cooldown ended", len(ps))
	}
	p = claim(t, s, at(31*time.Second), 5)
	if len(p) != 1 || p[0].Attempts != 0 || !p[0].QueuedAt.Equal(at(10*time.Second)) {
		t.Fatalf("at the cooldown's end: %+v, want one notification, queued at the first mail", p)
	}
	// Mail while it is in flight waits for the next cooldown.
	if n, _ := s.QueuePushes(ctx, "alice@chat.test", at(32*time.Second)); n != 1 {
		t.Errorf("mail in flight: %d, want 1", n)
	}
	if err := s.PushDone(ctx, p[0], at(32*time.Second), cooldown); err != nil {
		t.Fatal(err)
	}
	if ps := claim(t, s, at(33*time.Second), 5); len(ps) != 0 {
		t.Errorf("mail in flight posted %d at once, want at the cooldown's end", len(ps))
	}
	p = claim(t, s, at(62*time.Second), 5)
	if len(p) != 1 {
		t.Fatalf("mail in flight: claimed %d at the cooldown's end, want 1", len(p))
	}
	// No mail within the cooldown: the row goes at its end, unposted.
	if err := s.PushDone(ctx, p[0], at(63*time.Second), cooldown); err != nil {
		t.Fatal(err)
	}
	if ps := claim(t, s, at(93*time.Second), 5); len(ps) != 0 {
		t.Errorf("an ended cooldown without mail posted %d", len(ps))
	}
	var rows int
	if err := conn(t, dsn).QueryRow(ctx, `SELECT count(*) FROM push_queue`).Scan(&rows); err != nil || rows != 0 {
		t.Errorf("after the cooldown: %d rows (%v), want none: nothing outlives it", rows, err)
	}
	// The next mail is posted at once.
	if n, _ := s.QueuePushes(ctx, "alice@chat.test", at(94*time.Second)); n != 1 {
		t.Errorf("mail after the cooldown: %d, want 1", n)
	}
	if ps := claim(t, s, at(94*time.Second), 5); len(ps) != 1 || !ps[0].QueuedAt.Equal(at(94*time.Second)) {
		t.Errorf("mail after the cooldown: claimed %+v, want it at once", ps)
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
	if err := s.PushDone(ctx, first[0], now, 0); err != nil {
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
	if err := s.PushDone(ctx, second[0], now, 0); err != nil {
		t.Fatal(err)
	}
	if ps := claim(t, s, now, 1); len(ps) != 0 {
		t.Errorf("claimed %d after the holder's delivery", len(ps))
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
	if err := s.PushDone(ctx, p[0], later, 0); err != nil {
		t.Fatal(err)
	}
	q := claim(t, s, later, 5)
	if len(q) != 1 || q[0].Attempts != 0 || !q[0].QueuedAt.Equal(later) {
		t.Fatalf("after delivery with new mail in between: %+v, want one fresh notification", q)
	}
	if err := s.PushDone(ctx, q[0], later, 0); err != nil {
		t.Fatal(err)
	}
	if r := claim(t, s, later, 5); len(r) != 0 {
		t.Errorf("a third notification: %+v", r)
	}
	if _, ok, _ := s.NextPushDue(ctx); ok {
		t.Error("a row left")
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
