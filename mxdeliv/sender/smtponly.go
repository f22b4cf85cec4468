package sender

import (
	"sync"
	"time"
)

// smtpOnly remembers the mail servers that recently took a message over
// SMTP after their /mxdeliv failed, so the next deliveries skip the POST
// until the entry expires. It lives in memory: a restart costs one failed
// POST per peer.
type smtpOnly struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu    sync.Mutex
	until map[string]time.Time
}

func newSMTPOnly(ttl time.Duration, max int, now func() time.Time) *smtpOnly {
	return &smtpOnly{ttl: ttl, max: max, now: now, until: map[string]time.Time{}}
}

// has reports whether host is marked and the mark has not expired.
func (s *smtpOnly) has(host string) bool {
	if s.ttl <= 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.until[host]
	if ok && !s.now().Before(t) {
		delete(s.until, host)
		return false
	}
	return ok
}

// mark remembers host as SMTP-only for the TTL. When the table is full of
// live entries the host is not remembered: the cost is one more POST.
func (s *smtpOnly) mark(host string) {
	if s.ttl <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if _, ok := s.until[host]; !ok && len(s.until) >= s.max {
		for h, t := range s.until {
			if !now.Before(t) {
				delete(s.until, h)
			}
		}
		if len(s.until) >= s.max {
			return
		}
	}
	s.until[host] = now.Add(s.ttl)
}

// len is the number of entries, expired ones included until swept.
func (s *smtpOnly) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.until)
}
