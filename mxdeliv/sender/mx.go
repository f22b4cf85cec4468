package sender

import (
	"cmp"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/idna"
)

// Resolver is the part of *net.Resolver the sender uses; tests inject
// their own, so unit tests never touch DNS.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]*net.MX, error)
	LookupHost(ctx context.Context, host string) ([]string, error)
}

// maxMXHosts bounds the mail servers tried per attempt: a domain with more
// is either broken or hostile, and Postfix retries anyway.
const maxMXHosts = 5

// target is one mail server to try: Host is a DNS name or an IP address.
type target struct {
	Host string
	// Literal is set for a domain literal ([192.0.2.1]): there is no name
	// to verify a certificate against.
	Literal bool
}

// resolve returns the mail servers of domain in preference order, or the
// reply every recipient of the domain gets if there are none: null MX
// (RFC 7505) and a domain that does not exist are permanent, any other DNS
// trouble is temporary.
func resolve(ctx context.Context, r Resolver, domain string) ([]target, *Reply) {
	if strings.HasPrefix(domain, "[") {
		ip, ok := parseLiteral(domain)
		if !ok {
			return nil, &replyNoDomain
		}
		if special(ip) {
			// A local user must not make this host POST (with any
			// certificate accepted, there is no name) to its own
			// network and read the first line of the answer in a bounce.
			return nil, &replyLiteralRefused
		}
		return []target{{Host: ip.String(), Literal: true}}, nil
	}
	domain, ok := asciiDomain(domain)
	if !ok {
		return nil, &replyNoDomain
	}
	if _, err := netip.ParseAddr(domain); err == nil {
		// An IP address without brackets is no domain (the resolver
		// would answer it without asking, as an implicit MX).
		return nil, &replyNoDomain
	}
	mxs, err := r.LookupMX(ctx, domain)
	if err != nil && !notFound(err) {
		return nil, &replyDNSTemp
	}
	if err != nil || len(mxs) == 0 {
		// No MX records. Go's resolver says "not found" for a name
		// without MX records as for a name that does not exist: the
		// address records tell them apart (implicit MX, RFC 5321 5.1).
		_, herr := r.LookupHost(ctx, domain)
		switch {
		case herr == nil:
			return []target{{Host: domain}}, nil
		case notFound(herr):
			return nil, &replyNoDomain
		}
		return nil, &replyDNSTemp
	}
	if len(mxs) == 1 && (mxs[0].Host == "." || mxs[0].Host == "") {
		return nil, &replyNullMX
	}
	mxs = slices.Clone(mxs)
	slices.SortStableFunc(mxs, func(a, b *net.MX) int { return cmp.Compare(a.Pref, b.Pref) })
	var ts []target
	for _, mx := range mxs {
		h := strings.ToLower(strings.TrimSuffix(mx.Host, "."))
		if _, err := netip.ParseAddr(h); err == nil {
			continue // an MX must name a host, not an address (RFC 5321 5.1; Postfix too)
		}
		if h == "" || slices.ContainsFunc(ts, func(t target) bool { return t.Host == h }) {
			continue
		}
		ts = append(ts, target{Host: h})
		if len(ts) == maxMXHosts {
			break
		}
	}
	if len(ts) == 0 {
		return nil, &replyNullMX
	}
	return ts, nil
}

func notFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

// parseLiteral parses an address literal, [192.0.2.1] or [IPv6:2001:db8::1].
func parseLiteral(d string) (netip.Addr, bool) {
	if !strings.HasPrefix(d, "[") || !strings.HasSuffix(d, "]") {
		return netip.Addr{}, false
	}
	s := d[1 : len(d)-1]
	v6 := false
	if len(s) > 5 && strings.EqualFold(s[:5], "IPv6:") {
		s, v6 = s[5:], true
	}
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" || ip.Is6() != v6 || ip.Is4In6() {
		return netip.Addr{}, false
	}
	return ip, true
}

// lenientIDNA maps a Unicode domain to its ASCII form as UTS 46 does for
// lookups, without the STD3 and hyphen rules that an ASCII name of the
// DNS need not follow.
var lenientIDNA = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(false), idna.CheckHyphens(false))

// asciiDomain returns the form of domain that is looked up, dialed and
// verified: an ASCII domain as it is, an internationalized one (SMTPUTF8
// mail) in its A-label form (RFC 5891), as Postfix does.
func asciiDomain(domain string) (string, bool) {
	for i := 0; i < len(domain); i++ {
		if domain[i] >= 0x80 {
			a, err := lenientIDNA.ToASCII(domain)
			return lowerASCII(a), err == nil && a != ""
		}
	}
	return domain, true
}

// specialNets are the address blocks of IANA's special-purpose registries
// and those of clouds' internal services that no mail server of another
// domain uses: loopback, private, shared (CGNAT), link-local, documentation
// excepted (tests use it), benchmarking, reserved, and the IPv6 ones that
// embed or translate IPv4 addresses, which could reach any of these.
var specialNets = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
		"::/96", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64",
		"2001::/23", "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// special reports an address of specialNets.
func special(ip netip.Addr) bool {
	ip = ip.Unmap()
	if ip.IsUnspecified() || ip.IsLoopback() || ip.IsMulticast() || ip.IsLinkLocalUnicast() || ip.IsPrivate() {
		return true
	}
	return slices.ContainsFunc(specialNets, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// lowerASCII lower-cases the ASCII letters of a domain only: Unicode case
// mapping before UTS 46's own would change some names (ẞ to ß, where UTS
// 46 maps it to ss).
func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
