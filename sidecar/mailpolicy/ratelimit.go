package mailpolicy

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter is a token bucket per sender. Its memory is bounded by the
// senders active within one refill period: a sender idle long enough for
// its bucket to be full again is indistinguishable from a new one, so it is
// dropped at the next sweep.
type Limiter struct {
	mu      sync.Mutex
	limit   rate.Limit
	burst   int
	refill  time.Duration // time to refill an empty bucket
	senders map[string]*sender
	swept   time.Time
	now     func() time.Time
}

type sender struct {
	l    *rate.Limiter
	last time.Time
}

// NewLimiter allows burst messages at once, then perSecond on average.
func NewLimiter(burst int, perSecond float64) *Limiter {
	return &Limiter{
		limit:   rate.Limit(perSecond),
		burst:   burst,
		refill:  time.Duration(float64(burst) / perSecond * float64(time.Second)),
		senders: make(map[string]*sender),
		now:     time.Now,
	}
}

// Allow takes a token for key, reporting false when none is left.
func (l *Limiter) Allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.swept) >= l.refill {
		for k, s := range l.senders {
			if now.Sub(s.last) >= l.refill {
				delete(l.senders, k)
			}
		}
		l.swept = now
	}
	s := l.senders[key]
	if s == nil {
		s = &sender{l: rate.NewLimiter(l.limit, l.burst)}
		l.senders[key] = s
	}
	s.last = now
	return s.l.AllowN(now, 1)
}

// Len is the number of senders tracked.
func (l *Limiter) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.senders)
}
