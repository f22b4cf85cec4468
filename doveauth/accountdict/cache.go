package accountdict

import (
	"sync"
	"time"
)

// UserdbCacheTTL is how long a userdb "exists" answer is reused. Dovecot asks
// userdb for the same few users over and over (every login, every delivery);
// existence changes only on creation, which the cache does not hide, and on
// deletion, which chatmail-admin delete waits out before removing the mail.
const UserdbCacheTTL = 2 * time.Second

// maxCached bounds the cache's memory; past it the cache starts over.
const maxCached = 100_000

type existsCache struct {
	mu      sync.Mutex
	expires map[string]time.Time
}

func (c *existsCache) has(addr string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	exp, ok := c.expires[addr]
	return ok && now.Before(exp)
}

func (c *existsCache) add(addr string, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.expires == nil || len(c.expires) >= maxCached {
		c.expires = make(map[string]time.Time)
	}
	c.expires[addr] = now.Add(UserdbCacheTTL)
}
