package sender

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// unreachable remembers the addresses whose connect timed out, for a while,
// and refuses to dial them again meanwhile. Without it a local user who
// writes to many domains whose MX points at an address that drops
// packets holds Postfix's slots of all outgoing mail for the connect
// timeouts of every domain, message after message; with it that costs one
// timeout per address. The key is the IP address and port (an IPv6
// address by its /64, which one host may own whole): a server that drops
// port 443 can still take mail on 25.
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
	a := ap.Addr().Unmap()
	if a.Is6() {
		a = netip.PrefixFrom(a, 64).Masked().Addr()
	}
	return netip.AddrPortFrom(a, ap.Port())
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

// dialer returns a dial function that skips remembered addresses and
// remembers the ones tried when the connect as a whole timed out. The
// addresses of a name are tried one after the other (no Happy Eyeballs
// race), so the ones tried are the ones that failed.
func (u *unreachable) dialer(marked func()) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var mu sync.Mutex
		var tried []netip.AddrPort
		d := net.Dialer{
			FallbackDelay: -1,
			ControlContext: func(_ context.Context, _, address string, _ syscall.RawConn) error {
				ap, err := netip.ParseAddrPort(address)
				if err != nil {
					return nil
				}
				if u.has(ap) {
					return errRecentlyUnreachable
				}
				mu.Lock()
				tried = append(tried, ap)
				mu.Unlock()
				return nil
			},
		}
		c, err := d.DialContext(ctx, network, addr)
		var ne net.Error
		if err != nil && errors.As(err, &ne) && ne.Timeout() && !errors.Is(err, context.Canceled) {
			mu.Lock()
			for _, ap := range tried {
				u.mark(ap)
			}
			mu.Unlock()
			marked()
		}
		return c, err
	}
}
