package server

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// maxLimited bounds a limiter's table; past it, the buckets that are
// full again go, and if that is not enough, all go (an attacker filling
// it spreads its traffic over as many sources as it has entries).
const maxLimited = 100_000

// sourceIP is the key a source is counted and limited by: its IPv4
// address, or the /64 of its IPv6 address (a host gets a whole /64).
func sourceIP(a net.Addr) netip.Addr {
	ap := addrPort(a)
	ip := ap.Addr().Unmap().WithZone("")
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.Addr()
	}
	return ip
}

// sourcePrefix is the key of a source's network for the response limit:
// its IPv4 /24, its IPv6 /64.
func sourcePrefix(ap netip.AddrPort) netip.Addr {
	ip := ap.Addr().Unmap().WithZone("")
	bits := 64
	if ip.Is4() {
		bits = 24
	}
	p, _ := ip.Prefix(bits)
	return p.Addr()
}

// respLimiter limits the UDP sockets' responses to sources without an
// allocation (unauthenticated_responses_per_prefix, n a second): each
// source address (IPv4 /32, IPv6 /128) has a bucket of its own, n/4 a
// second (Binding answers, twice a 401's size, n/10 of them), in front of
// its network's (/24, /64) bucket of n. A spoofer flooding one address
// empties that address's bucket, not its network's: its neighbours are
// still answered, and starving a network takes spoofing at least 4 of its
// addresses (10 with Binding requests).
type respLimiter struct {
	source, binding, prefix *limiter
}

func newRespLimiter(n int) *respLimiter {
	if n <= 0 {
		return nil
	}
	perSource, perBinding := max(1, float64(n)/4), max(1, float64(n)/10)
	return &respLimiter{
		source:  newLimiter(perSource, perSource),
		binding: newLimiter(perBinding, perBinding),
		prefix:  newLimiter(float64(n), float64(n)),
	}
}

// allow takes the tokens a response to ap needs (binding: it answers a
// Binding request), reporting whether there were. The source's bucket
// goes first, so that a source over its own rate uses none of its
// network's.
func (l *respLimiter) allow(ap netip.AddrPort, binding bool, now time.Time) bool {
	ip := ap.Addr().Unmap().WithZone("")
	if binding && !l.binding.take(ip, now) {
		return false
	}
	return l.source.take(ip, now) && l.prefix.take(sourcePrefix(ap), now)
}

// addrPort is a UDP or TCP address as a netip.AddrPort (the zero one for
// others).
func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort()
	case *net.TCPAddr:
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// srcKey names a client's transport address: pion finds an allocation by
// it (with the server address, which pion's permission handler is not
// given).
type srcKey struct {
	ap  netip.AddrPort
	tcp bool
}

func keyOf(a net.Addr) srcKey {
	_, tcp := a.(*net.TCPAddr)
	return srcKey{ap: addrPort(a), tcp: tcp}
}

// limiter is a token bucket per key: rate tokens a second, at most burst.
type limiter struct {
	rate, burst float64

	mu sync.Mutex
	m  map[netip.Addr]tokens
}

type tokens struct {
	n    float64
	last time.Time
}

func newLimiter(rate, burst float64) *limiter {
	if rate <= 0 {
		return nil
	}
	return &limiter{rate: rate, burst: burst, m: map[netip.Addr]tokens{}}
}

// take takes a token of k's bucket, reporting whether there was one. A
// nil limiter always has one.
func (l *limiter) take(k netip.Addr, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	t, ok := l.m[k]
	if !ok {
		if len(l.m) >= maxLimited {
			l.prune(now)
		}
		t = tokens{n: l.burst, last: now}
	}
	t.n = min(l.burst, t.n+now.Sub(t.last).Seconds()*l.rate)
	t.last = now
	if t.n < 1 {
		l.m[k] = t
		return false
	}
	t.n--
	l.m[k] = t
	return true
}

func (l *limiter) prune(now time.Time) {
	for k, t := range l.m {
		if t.n+now.Sub(t.last).Seconds()*l.rate >= l.burst {
			delete(l.m, k)
		}
	}
	if len(l.m) >= maxLimited {
		clear(l.m)
	}
}
