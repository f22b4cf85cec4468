package accountdict

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// An overlong password fails as "not found" before the store is asked and
// before anything is hashed, for new and for existing accounts, so that
// neither doveauth nor Dovecot spends seconds of CPU on it.
func TestPasswordMaxLength(t *testing.T) {
	s, st, _ := newService(t)
	if s.Accounts.PasswordMaxLength != 128 {
		t.Fatalf("default password_max_length = %d, want 128", s.Accounts.PasswordMaxLength)
	}
	existing := strings.Repeat("p", 128) // the longest allowed
	if _, found, err := passdb(t, s, "abcdefghi@chat.test", existing); !found || err != nil {
		t.Fatalf("128-byte password: found=%v err=%v", found, err)
	}
	for _, pass := range []string{strings.Repeat("p", 129), strings.Repeat("p", 60_000), strings.Repeat(`"`, 129)} {
		for _, user := range []string{"abcdefghi@chat.test", "zzzzzzzzz@chat.test"} {
			gets := st.gets
			start := time.Now()
			_, found, err := passdb(t, s, user, pass)
			if found || err != nil {
				t.Errorf("%s, %d-byte password: found=%v err=%v, want not found", user, len(pass), found, err)
			}
			if st.gets != gets {
				t.Errorf("%s, %d-byte password: the store was asked", user, len(pass))
			}
			if d := time.Since(start); d > 50*time.Millisecond {
				t.Errorf("%s, %d-byte password took %v", user, len(pass), d)
			}
		}
	}
	if len(st.accs) != 1 {
		t.Errorf("accounts: %v", st.accs)
	}
	if n := testutil.ToFloat64(s.Metrics.rejections.WithLabelValues("long_password")); n != 6 {
		t.Errorf("long_password rejections = %v, want 6", n)
	}
}

func TestLocalpartChars(t *testing.T) {
	s, st, _ := newService(t)
	bad := []string{".........", "a.b-c_d12", "abcd_efgh", "abcd-efgh", "abcd.efgh", "abcdefgh-", "_abcdefgh"}
	for _, lp := range bad {
		if _, found, err := passdb(t, s, lp+"@chat.test", "password123"); found || err != nil {
			t.Errorf("%s: found=%v err=%v, want not found", lp, found, err)
		}
	}
	if _, found, err := passdb(t, s, "abc123xyz@chat.test", "password123"); !found || err != nil {
		t.Errorf("abc123xyz: found=%v err=%v", found, err)
	}
	s.Accounts.LocalpartPunctuation = true
	for _, lp := range []string{".........", "abc..defg", ".abcdefgh", "abcdefgh.", "abc._defg", "-abcdefgh", "abcdefgh_"} {
		if _, found, err := passdb(t, s, lp+"@chat.test", "password123"); found || err != nil {
			t.Errorf("punctuation on, %s: found=%v err=%v, want not found", lp, found, err)
		}
	}
	for _, lp := range []string{"a.b-c_d12", "abcd_efgh"} {
		if _, found, err := passdb(t, s, lp+"@chat.test", "password123"); !found || err != nil {
			t.Errorf("punctuation on, %s: found=%v err=%v", lp, found, err)
		}
	}
	if len(st.accs) != 3 {
		t.Errorf("accounts: %v", st.accs)
	}
}

func TestCreationRateLimit(t *testing.T) {
	s, st, reg := newService(t)
	s.Accounts.CreateBurst, s.Accounts.CreatePerMinute = 3, 1
	for _, lp := range []string{"aaaaaaaa1", "aaaaaaaa2", "aaaaaaaa3"} {
		if _, found, err := passdb(t, s, lp+"@chat.test", "password123"); !found || err != nil {
			t.Fatalf("%s within the burst: found=%v err=%v", lp, found, err)
		}
	}
	// Logins of existing accounts and refused creations cost nothing.
	for range 5 {
		if _, found, err := passdb(t, s, "aaaaaaaa1@chat.test", "password123"); !found || err != nil {
			t.Fatalf("existing account over the limit: found=%v err=%v", found, err)
		}
	}
	_, found, err := passdb(t, s, "aaaaaaaa4@chat.test", "password123")
	if found || err == nil || !strings.Contains(err.Error(), "try again later") {
		t.Fatalf("creation over the limit: found=%v err=%v, want a temporary failure", found, err)
	}
	if len(st.accs) != 3 {
		t.Errorf("%d accounts, want 3", len(st.accs))
	}
	if n := testutil.ToFloat64(s.Metrics.lookups.WithLabelValues("passdb", "ratelimited")); n != 1 {
		t.Errorf("ratelimited lookups = %v", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
}

// Concurrent first logins of one address (Delta Chat logs in to IMAP and
// SMTP at once) take one token: the losers give theirs back.
func TestRateLimitRefunds(t *testing.T) {
	s, st, _ := newService(t)
	s.Accounts.CreateBurst, s.Accounts.CreatePerMinute = 2, 1
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { passdb(t, s, "aaaaaaaa1@chat.test", "password123") })
	}
	wg.Wait()
	// A tombstoned address gives its token back too.
	st.tombs[string(testKey.Hash("aaaaaaaa2@chat.test"))] = true
	if _, found, err := passdb(t, s, "aaaaaaaa2@chat.test", "password123"); found || err != nil {
		t.Fatalf("tombstoned: found=%v err=%v", found, err)
	}
	if _, found, err := passdb(t, s, "aaaaaaaa3@chat.test", "password123"); !found || err != nil {
		t.Fatalf("second account of a burst of 2: found=%v err=%v", found, err)
	}
	if _, found, err := passdb(t, s, "aaaaaaaa4@chat.test", "password123"); found || err == nil {
		t.Fatalf("third account of a burst of 2: found=%v err=%v", found, err)
	}
}

func TestBucket(t *testing.T) {
	var b bucket
	t0 := time.Unix(1e9, 0)
	for i := range 10 {
		if !b.take(t0, 10, 60) {
			t.Fatalf("token %d of the burst refused", i)
		}
	}
	if b.take(t0.Add(900*time.Millisecond), 10, 60) {
		t.Fatal("a token before a second passed at 60/min")
	}
	if !b.take(t0.Add(1100*time.Millisecond), 10, 60) || b.take(t0.Add(1200*time.Millisecond), 10, 60) {
		t.Fatal("not one token after a second at 60/min")
	}
	// A long pause refills to the burst, not beyond.
	n := 0
	for b.take(t0.Add(time.Hour), 10, 60) {
		n++
	}
	if n != 10 {
		t.Fatalf("after an hour %d tokens, want 10", n)
	}
	var off bucket
	for range 100 {
		if !off.take(t0, 1, 0) {
			t.Fatal("create_per_minute = 0 limited")
		}
	}
}

func TestTombstoneRefusesCreation(t *testing.T) {
	s, st, _ := newService(t)
	st.tombs[string(testKey.Hash("abcdefghi@chat.test"))] = true
	if _, found, err := passdb(t, s, "ABCDEFGHI@chat.test", "password123"); found || err != nil {
		t.Errorf("tombstoned address: found=%v err=%v, want not found (a permanent failure)", found, err)
	}
	if len(st.accs) != 0 {
		t.Error("tombstoned address created")
	}
	// Another key gives other tombstones: the key matters.
	s.TombstoneKey = []byte("another key, also 32 bytes long!")
	if _, found, err := passdb(t, s, "abcdefghi@chat.test", "password123"); !found || err != nil {
		t.Errorf("with another key: found=%v err=%v", found, err)
	}
	if n := testutil.ToFloat64(s.Metrics.rejections.WithLabelValues("tombstone")); n != 1 {
		t.Errorf("tombstone rejections = %v", n)
	}
}

// A tombstoned address is refused before a password is hashed or a
// creation token taken: each login attempt on it would otherwise cost a
// hash. A scheme that cannot hash shows it: hashing would fail.
func TestTombstoneBeforeHash(t *testing.T) {
	s, st, _ := newService(t)
	s.Accounts.PasswordScheme = "NO-SUCH-SCHEME"
	s.Accounts.CreateBurst, s.Accounts.CreatePerMinute = 1, 1
	st.tombs[string(testKey.Hash("abcdefghi@chat.test"))] = true
	for range 3 {
		if _, found, err := passdb(t, s, "abcdefghi@chat.test", "password123"); found || err != nil {
			t.Fatalf("tombstoned address: found=%v err=%v, want not found", found, err)
		}
		if _, res, err := s.Create(context.Background(), "abcdefghi@chat.test", "password123"); res != NotFound || err != nil {
			t.Fatalf("2.4's Create on a tombstoned address: %s %v", res, err)
		}
	}
	if st.creates != 0 {
		t.Errorf("Store.Create called %d times for a tombstoned address", st.creates)
	}
	// No token was taken: the one of the burst is still there.
	if !s.creations.take(time.Now(), s.Accounts.CreateBurst, s.Accounts.CreatePerMinute) {
		t.Error("a tombstoned address used the creation token")
	}
	if n := testutil.ToFloat64(s.Metrics.rejections.WithLabelValues("tombstone")); n != 6 {
		t.Errorf("tombstone rejections = %v, want 6", n)
	}
}

// A deletion that commits between the read-only check and the creating
// transaction is still refused there (Store.Create's ErrTombstoned), and
// the token is given back.
func TestTombstoneRace(t *testing.T) {
	s, st, _ := newService(t)
	s.Accounts.CreateBurst, s.Accounts.CreatePerMinute = 1, 1
	st.tombs[string(testKey.Hash("abcdefghi@chat.test"))] = true
	st.lateTombs = true
	if _, found, err := passdb(t, s, "abcdefghi@chat.test", "password123"); found || err != nil {
		t.Errorf("tombstoned address: found=%v err=%v, want not found", found, err)
	}
	if st.creates != 1 || len(st.accs) != 0 {
		t.Errorf("creates = %d, accounts = %d; want the creating transaction to refuse", st.creates, len(st.accs))
	}
	if !s.creations.take(time.Now(), s.Accounts.CreateBurst, s.Accounts.CreatePerMinute) {
		t.Error("the refused creation kept its token")
	}
	// The store down at the read: try again later.
	st.down, st.lateTombs = true, false
	if _, _, err := passdb(t, s, "zyxwvutsr@chat.test", "password123"); err == nil {
		t.Error("store down: no error")
	}
}
