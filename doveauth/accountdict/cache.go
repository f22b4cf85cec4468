package accountdict

import (
	"sync"
	"time"
)

// UserdbCacheTTL is how long a userdb "exists" answer is reused. Dovecot asks
// userdb for the same few users over and over (every login, every delivery).
// Existence changes on creation, which the cache does not hide, and on
// deletion, which the store announces (accounts.Store.WatchChanges): the
// cache drops the address then. The lifetime bounds how long a lost
// notification could go unnoticed (a listening connection that stalls is
// found out only by its next check), so it is short; while notifications
// are not heard at all, nothing is cached. Mail delivered in that window to
// a deleted account is removed by chatmail-admin sweep.
const UserdbCacheTTL = 2 * time.Second

// maxCached bounds the cache's memory; past it the cache starts over.
const maxCached = 100_000

// existsCache remembers which addresses exist. A lookup that read the store
// adds its answer only if nothing was invalidated meanwhile (gen), so a
// deletion announced while the lookup was reading is never hidden by it.
type existsCache struct {
	mu       sync.Mutex
	expires  map[string]time.Time
	gen      uint64
	watching bool
	// changed, if set, hears of every invalidation (tests).
	changed func(addr string)
}

func (c *existsCache) has(addr string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.expires[addr]
	return ok && now.Before(exp)
}

// generation returns the token that add needs: take it before reading the
// store.
func (c *existsCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// add remembers that addr exists, as read from the store after generation
// returned gen.
func (c *existsCache) add(addr string, gen uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.watching || gen != c.gen {
		return
	}
	if c.expires == nil || len(c.expires) >= maxCached {
		c.expires = make(map[string]time.Time)
	}
	c.expires[addr] = now.Add(UserdbCacheTTL)
}

// drop forgets addr ("" forgets everything).
func (c *existsCache) drop(addr string) {
	c.mu.Lock()
	c.gen++
	if addr == "" {
		c.expires = nil
	} else {
		delete(c.expires, addr)
	}
	changed := c.changed
	c.mu.Unlock()
	if changed != nil {
		changed(addr)
	}
}

func (c *existsCache) setWatching(on bool) {
	c.mu.Lock()
	c.watching = on
	c.mu.Unlock()
	c.drop("")
}

// AccountChanged implements accounts.ChangeHandler: the store announced a
// change of addr (block, unblock, delete).
func (s *Service) AccountChanged(addr string) { s.userdbCache.drop(addr) }

// WatchingChanges implements accounts.ChangeHandler: the userdb cache is
// used only while the store's changes are heard.
func (s *Service) WatchingChanges(on bool) { s.userdbCache.setWatching(on) }
