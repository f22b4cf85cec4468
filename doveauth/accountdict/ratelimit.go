package accountdict

import (
	"sync"
	"time"
)

// bucket is the token bucket of account creations: it holds up to burst
// tokens and gains perMinute of them a minute. Its parameters come with
// each call, from the configuration; perMinute 0 is no limit.
type bucket struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
	inited bool
}

// take takes a token if there is one.
func (b *bucket) take(now time.Time, burst, perMinute int) bool {
	if perMinute <= 0 {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.inited {
		b.tokens, b.last, b.inited = float64(burst), now, true
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens += d.Minutes() * float64(perMinute)
		b.last = now
	}
	b.tokens = min(b.tokens, float64(burst))
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// refund gives back a token that take gave but that created nothing. The
// next take caps the count at burst again.
func (b *bucket) refund() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inited {
		b.tokens++
	}
}
