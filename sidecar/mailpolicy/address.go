package mailpolicy

import (
	"net/mail"
	"strings"

	"chatmail.dev/sidecar/mimescan"
)

// normalize returns addr with angle brackets and surrounding space removed
// and the domain lower-cased; the local part is kept as is (RFC 5321 2.4).
// It returns "" for the null address and for anything without exactly one '@'.
func normalize(addr string) string {
	addr = strings.TrimSpace(addr)
	addr = strings.TrimSuffix(strings.TrimPrefix(addr, "<"), ">")
	local, domain, ok := strings.Cut(addr, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") {
		return ""
	}
	return local + "@" + strings.TrimSuffix(strings.ToLower(domain), ".")
}

// domainOf returns the domain of a normalized address.
func domainOf(addr string) string {
	_, d, _ := strings.Cut(addr, "@")
	return d
}

// headerAddress parses the value of a From field holding exactly one
// mailbox and returns it normalized, or "" if it is anything else or not
// a boundedAddress: the From address is written back into the header, so
// it must carry no more text than any other address.
func headerAddress(value string) string {
	list, err := mail.ParseAddressList(unfold(value))
	if err != nil || len(list) != 1 {
		return ""
	}
	if a := normalize(list[0].Address); boundedAddress(a) {
		return a
	}
	return ""
}

// Bounds of an address that the policy lets into a header or envelope.
const (
	maxLocalPart = 64  // RFC 5321 4.5.3.1.1
	maxDomain    = 253 // longest domain name in DNS
)

// boundedAddress reports whether a normalized address is a plainAddress
// with a local part and a domain no longer than any real one: quoted
// local parts ("any words here"@x) and endless subdomains are text, not
// addresses.
func boundedAddress(addr string) bool {
	local, domain, _ := strings.Cut(addr, "@")
	return plainAddress(addr) && len(local) <= maxLocalPart && len(domain) <= maxDomain
}

// sameAddress reports whether two normalized addresses are the same
// mailbox: equal ignoring case (the domains are lower-cased already; local
// parts are compared case-insensitively as Dovecot lower-cases logins).
// The null address is nobody's.
func sameAddress(a, b string) bool { return a != "" && strings.EqualFold(a, b) }

// plainAddress reports whether a normalized address is a plain
// local@domain: a dot-atom local part without '%' or '!', and a domain
// name. Anything else ("" included) may be rewritten by the MTA (percent
// hack, bang path, source route) or routed by an address literal.
func plainAddress(addr string) bool {
	local, domain, ok := strings.Cut(addr, "@")
	return ok && mimescan.DotAtom(local) && !strings.ContainsAny(local, "%!") &&
		mimescan.DotAtom(domain) && !strings.ContainsFunc(domain, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '.')
	})
}
