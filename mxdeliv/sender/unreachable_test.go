package sender

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"
)

// blackhole returns a loopback address whose connects time out: a socket
// listening with a backlog of zero whose queue is full, so the kernel
// drops further SYNs (as a host that drops packets does).
func blackhole(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "blackhole")
	t.Cleanup(func() { f.Close() })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port)).String()
	// Fill the queue; nothing accepts.
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the listener's queue never filled")
	return ""
}

// An address whose connect timed out in a fair attempt is not dialed
// again for a while: the next connect fails at once (one timeout per address, not one per
// domain that points there); other ports and addresses are dialed, and
// the memory expires.
func TestUnreachableRemembered(t *testing.T) {
	c := &clock{t: time.Unix(1e9, 0)}
	down := newUnreachable(5*time.Minute, 100, c.now)
	marked := 0
	noLookup := func(context.Context, string) ([]string, error) { return nil, errors.New("no lookup here") }
	dial := down.dialer(noLookup, 100*time.Millisecond, func() { marked++ })
	hole := blackhole(t)
	ctx := context.Background()

	// Too little time to prove anything: not remembered (else whoever
	// can leave our dial little time could get a healthy host's
	// address remembered).
	tiny, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err := dial(tiny, "tcp", hole)
	cancel()
	if err == nil || marked != 0 || down.has(netip.MustParseAddrPort(hole)) {
		t.Fatalf("a 50 ms attempt: %v, marked %d", err, marked)
	}

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = dial(short, "tcp", hole)
	cancel()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || marked != 1 {
		t.Fatalf("dial of the black hole: %v (marked %d), want a timeout, remembered", err, marked)
	}
	start := time.Now()
	_, err = dial(ctx, "tcp", hole)
	if !errors.Is(err, errRecentlyUnreachable) || time.Since(start) > 2*time.Second {
		t.Fatalf("second dial: %v after %v, want %v at once", err, time.Since(start), errRecentlyUnreachable)
	}
	if errKind(err) != "connect" {
		t.Errorf("kind %q", errKind(err))
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("another port of the same address: %v", err)
	}
	conn.Close()

	c.add(5 * time.Minute)
	if down.has(netip.MustParseAddrPort(hole)) {
		t.Error("still remembered after the TTL")
	}
}

// Each address is its own (an IPv6 neighbour in the same /64 may be
// someone else's); a full table remembers no more live entries, and
// sweeps expired ones.
func TestUnreachableTable(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	u := newUnreachable(time.Minute, 2, c.now)
	u.mark(netip.MustParseAddrPort("[2001:db8:1:2::1]:443"))
	if !u.has(netip.MustParseAddrPort("[2001:db8:1:2::1]:443")) || u.has(netip.MustParseAddrPort("[2001:db8:1:2::2]:443")) || u.has(netip.MustParseAddrPort("[2001:db8:1:2::1]:25")) {
		t.Error("not keyed by address and port")
	}
	u.mark(netip.MustParseAddrPort("192.0.2.1:25"))
	u.mark(netip.MustParseAddrPort("192.0.2.2:25"))
	if u.has(netip.MustParseAddrPort("192.0.2.2:25")) || u.len() != 2 {
		t.Error("a full table took a live entry")
	}
	c.add(time.Minute)
	u.mark(netip.MustParseAddrPort("192.0.2.2:25"))
	if !u.has(netip.MustParseAddrPort("192.0.2.2:25")) || u.len() != 1 {
		t.Errorf("expired entries not swept: %d", u.len())
	}
	if !u.has(netip.MustParseAddrPort("[::ffff:192.0.2.2]:25")) {
		t.Error("a mapped IPv4 address is another key")
	}
}
