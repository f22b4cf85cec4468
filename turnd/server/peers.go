package server

import (
	"net"
	"net/netip"
	"sync/atomic"
)

// forbiddenV4 are the IPv4 ranges a relay never sends to unless allow_peers
// names them: what is not a host on the public internet, or is this
// network's inside (RFC 6890 special-purpose registry).
var forbiddenV4 = mustPrefixes(
	"0.0.0.0/8",          // "this network", 0.0.0.0 included
	"10.0.0.0/8",         // private
	"100.64.0.0/10",      // shared address space (CGNAT)
	"127.0.0.0/8",        // loopback
	"169.254.0.0/16",     // link-local (cloud metadata services)
	"172.16.0.0/12",      // private
	"192.0.0.0/24",       // IETF protocol assignments
	"192.0.2.0/24",       // documentation
	"192.88.99.0/24",     // 6to4 relay anycast (deprecated)
	"192.168.0.0/16",     // private
	"198.18.0.0/15",      // benchmarking
	"198.51.100.0/24",    // documentation
	"203.0.113.0/24",     // documentation
	"224.0.0.0/4",        // multicast
	"240.0.0.0/4",        // reserved, 255.255.255.255 included
	"255.255.255.255/32", // limited broadcast (inside 240/4 too, for the reader)
)

func mustPrefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// peerPolicy decides which peer addresses a relay may send to. Relays are
// IPv4 sockets (pion allocates "udp4"): an IPv4-mapped IPv6 peer is judged
// as the IPv4 address it maps, and every other IPv6 peer is refused unless
// allowed, since it cannot be reached and, through NAT64 or 6to4 prefixes,
// could name an inside address.
type peerPolicy struct {
	allow []netip.Prefix
	// own are this host's addresses (every interface's, their subnets'
	// broadcast addresses, the advertised relay address), refreshed now
	// and then: a relay sending to its own host reaches the TURN port,
	// other allocations' relay ports and every local service.
	own atomic.Pointer[map[netip.Addr]struct{}]
}

func newPeerPolicy(allow []netip.Prefix, extra ...netip.Addr) *peerPolicy {
	p := &peerPolicy{allow: allow}
	p.refreshOwn(extra...)
	return p
}

// refreshOwn reads the interfaces' addresses again; extra are added.
func (p *peerPolicy) refreshOwn(extra ...netip.Addr) {
	own := map[netip.Addr]struct{}{}
	for _, a := range extra {
		own[a.Unmap()] = struct{}{}
	}
	// Without the interface list, the fixed ranges and extra still hold;
	// the next refresh tries again.
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		own[ip] = struct{}{}
		if ip.Is4() {
			// The subnet's broadcast address reaches this host too.
			ones, bits := n.Mask.Size()
			if bits == 32 && ones < 31 {
				b := ip.As4()
				host := uint32(1)<<(32-ones) - 1
				v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | host
				own[netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})] = struct{}{}
			}
		}
	}
	p.own.Store(&own)
}

// allowed reports whether a relay may send to ip.
func (p *peerPolicy) allowed(ip netip.Addr) bool {
	ip = ip.Unmap().WithZone("")
	for _, a := range p.allow {
		if a.Contains(ip) {
			return true
		}
	}
	if !ip.Is4() {
		return false
	}
	for _, f := range forbiddenV4 {
		if f.Contains(ip) {
			return false
		}
	}
	_, own := (*p.own.Load())[ip]
	return !own
}

// allowedIP is allowed for a net.IP; an invalid one is refused.
func (p *peerPolicy) allowedIP(ip net.IP) bool {
	a, ok := netip.AddrFromSlice(ip)
	return ok && p.allowed(a)
}
