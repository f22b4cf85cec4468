package sender

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// unreachable remembers the addresses whose connect timed out, for a while,
// and refuses to dial them again meanwhile. Without it a local user who
// writes to many domains whose MX points at an address that drops
// packets holds Postfix's slots of all outgoing mail for the connect
// timeouts of every domain, message after message; with it that costs one
// timeout per address. The key is the IP address and port: a server that
// drops port 443 can still take mail on 25. Only an address whose own
// attempt had minBudget and timed out is remembered, so that no one can
// get a healthy third party's address remembered by leaving our dial
// little time (a delivery's deadline about to pass, a slow DNS answer,
// black holes listed before it).
type unreachable struct {
	ttl time.Duration
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[netip.AddrPort]time.Time // until when
}

func newUnreachable(ttl time.Duration, max int, now func() time.Time) *unreachable {
	return &unreachable{ttl: ttl, max: max, now: now, m: map[netip.AddrPort]time.Time{}}
}

// errRecentlyUnreachable is the dial error for a remembered address.
var errRecentlyUnreachable = errors.New("connect timed out recently")

func unreachableKey(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (u *unreachable) has(ap netip.AddrPort) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	until, ok := u.m[unreachableKey(ap)]
	return ok && u.now().Before(until)
}

// mark remembers ap; when the table is full of live entries it is not
// remembered (the next connect to it just times out again).
func (u *unreachable) mark(ap netip.AddrPort) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := u.now()
	if len(u.m) >= u.max {
		for k, until := range u.m {
			if !now.Before(until) {
				delete(u.m, k)
			}
		}
		if len(u.m) >= u.max {
			return
		}
	}
	u.m[unreachableKey(ap)] = now.Add(u.ttl)
}

func (u *unreachable) len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}

// dialer returns a dial function that looks host names up with lookup,
// tries their addresses one after the other, each with an equal share of
// the time left, skips remembered ones and remembers those whose own
// attempt of at least minBudget timed out.
func (u *unreachable) dialer(lookup func(ctx context.Context, host string) ([]string, error), minBudget time.Duration, marked func()) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, portText, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", portText, err)
		}
		names := []string{host}
		if _, err := netip.ParseAddr(host); err != nil {
			if names, err = lookup(ctx, host); err != nil {
				return nil, err
			}
		}
		var ips []netip.Addr
		for _, n := range names {
			if ip, err := netip.ParseAddr(n); err == nil {
				ips = append(ips, ip.Unmap())
			}
		}
		if len(ips) == 0 {
			return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("no address")}
		}
		var d net.Dialer
		var firstErr error
		for i, ip := range ips {
			ap := netip.AddrPortFrom(ip, uint16(port))
			if u.has(ap) {
				if firstErr == nil {
					firstErr = &net.OpError{Op: "dial", Net: network, Addr: net.TCPAddrFromAddrPort(ap), Err: errRecentlyUnreachable}
				}
				continue
			}
			budget := time.Duration(1 << 62)
			if dl, ok := ctx.Deadline(); ok {
				budget = time.Until(dl) / time.Duration(len(ips)-i)
			}
			actx, cancel := context.WithTimeout(ctx, budget)
			c, err := d.DialContext(actx, network, ap.String())
			cancel()
			if err == nil {
				return c, nil
			}
			// The attempt's own time counts, whoever's deadline ended
			// it; a cancellation (shutdown) proves nothing.
			var ne net.Error
			if !errors.Is(ctx.Err(), context.Canceled) && budget >= minBudget && errors.As(err, &ne) && ne.Timeout() {
				u.mark(ap)
				marked()
			}
			if firstErr == nil {
				firstErr = err
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, firstErr
	}
}
