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
		if !ip.IsGlobalUnicast() || ip.IsPrivate() {
			// A local user must not make this host POST (with any
			// certificate accepted, there is no name) to its own
			// network and read the first line of the answer in a bounce.
			return nil, &replyLiteralRefused
		}
		return []target{{Host: ip.String(), Literal: true}}, nil
	}
	// An internationalized domain (SMTPUTF8 mail) is looked up, dialed
	// and verified in its ASCII form (RFC 5891), as Postfix does.
	domain, err := idna.Lookup.ToASCII(domain)
	if err != nil {
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
