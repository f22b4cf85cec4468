package accountdict

import (
	"context"
	"testing"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/dict"
)

var _ accounts.ChangeHandler = (*Service)(nil)

var testNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func userdbFound(t *testing.T, s *Service, addr string) bool {
	t.Helper()
	_, found, err := s.Lookup(context.Background(), dict.Lookup{Key: "shared/userdb/" + addr})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// While the store's changes are heard, userdb answers are cached, and a
// deletion's notification makes the next lookup miss at once.
func TestUserdbCacheInvalidation(t *testing.T) {
	s, st, _ := newService(t)
	const addr = "abcdefghi@chat.test"
	st.accs[addr] = &accounts.Account{Address: addr}
	// The notifier acknowledges each invalidation on this channel.
	acked := make(chan string, 10)
	s.userdbCache.changed = func(a string) { acked <- a }
	s.WatchingChanges(true)
	<-acked

	// Twice: the second answer comes from the cache.
	for range 2 {
		if !userdbFound(t, s, addr) {
			t.Fatal("userdb does not find the account")
		}
	}
	gets := st.gets
	if !userdbFound(t, s, addr) || st.gets != gets {
		t.Fatalf("cached lookup read the store (%d reads, want %d)", st.gets, gets)
	}

	// Delete: the row goes, the store notifies.
	st.mu.Lock()
	delete(st.accs, addr)
	st.mu.Unlock()
	if !userdbFound(t, s, addr) {
		t.Fatal("the cache was not used before the notification")
	}
	go s.AccountChanged(addr)
	if got := <-acked; got != addr {
		t.Fatalf("invalidated %q", got)
	}
	if userdbFound(t, s, addr) {
		t.Error("userdb finds a deleted account after its notification")
	}
}

// Nothing is cached while notifications are not heard, and whatever was
// cached is dropped when they stop.
func TestUserdbCacheOffWithoutNotifications(t *testing.T) {
	s, st, _ := newService(t)
	const addr = "abcdefghi@chat.test"
	st.accs[addr] = &accounts.Account{Address: addr}
	userdbFound(t, s, addr)
	gets := st.gets
	userdbFound(t, s, addr)
	if st.gets != gets+1 {
		t.Errorf("cached without notifications: %d reads, want %d", st.gets, gets+1)
	}
	s.WatchingChanges(true)
	userdbFound(t, s, addr)
	s.WatchingChanges(false)
	delete(st.accs, addr)
	if userdbFound(t, s, addr) {
		t.Error("a cached answer survived the loss of notifications")
	}
}

// A notification that arrives while a lookup reads the store keeps that
// lookup's answer out of the cache.
func TestUserdbCacheRace(t *testing.T) {
	var c existsCache
	c.setWatching(true)
	gen := c.generation()
	c.drop("abcdefghi@chat.test") // the deletion commits during the read
	c.add("abcdefghi@chat.test", gen, testNow)
	if c.has("abcdefghi@chat.test", testNow) {
		t.Error("a read older than the invalidation was cached")
	}
	gen = c.generation()
	c.add("abcdefghi@chat.test", gen, testNow)
	if !c.has("abcdefghi@chat.test", testNow) || c.has("abcdefghi@chat.test", testNow.Add(UserdbCacheTTL)) {
		t.Error("cache lifetime wrong")
	}
}
