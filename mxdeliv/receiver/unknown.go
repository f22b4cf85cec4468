package receiver

import (
	"sync"
	"time"

	"chatmail.dev/sidecar/mailpolicy"
)

// UnknownLimiter bounds how fast a sending domain learns that addresses
// have no account here. Each answer "unknown recipient" takes a token of
// the bucket of the message's DKIM signer (the d= of the aligned signature
// that passed: it cannot be spread over forged names, nor over the From
// subdomains relaxed alignment allows). With the bucket empty, every
// request from that domain is answered "try again later" before any
// recipient is looked up, for one refill period, so that neither answer
// tells anything; the sender falls back to SMTP, which answers no faster
// (a bounce per unknown address).
type UnknownLimiter struct {
	l      *mailpolicy.Limiter
	period time.Duration // one token's refill

	mu    sync.Mutex
	until map[string]time.Time
	now   func() time.Time
}

// NewUnknownLimiter allows burst unknown-recipient answers per domain,
// then perMinute.
func NewUnknownLimiter(burst int, perMinute float64) *UnknownLimiter {
	return &UnknownLimiter{
		l:      mailpolicy.NewLimiter(burst, perMinute/60),
		period: time.Duration(float64(time.Minute) / perMinute),
		until:  make(map[string]time.Time),
		now:    time.Now,
	}
}

// Limited reports whether domain is serving its penalty.
func (u *UnknownLimiter) Limited(domain string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	for d, t := range u.until {
		if !now.Before(t) {
			delete(u.until, d) // bounded by the domains limited in one period
		}
	}
	_, ok := u.until[domain]
	return ok
}

// Allow takes a token for an unknown-recipient answer to domain; false
// starts its penalty.
func (u *UnknownLimiter) Allow(domain string) bool {
	if u.l.Allow(domain) {
		return true
	}
	u.mu.Lock()
	u.until[domain] = u.now().Add(u.period)
	u.mu.Unlock()
	return false
}
