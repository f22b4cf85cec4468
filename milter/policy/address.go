package policy

import (
	"net/mail"
	"strings"
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

// isLiteral reports whether domain is an address literal, [192.0.2.1].
func isLiteral(domain string) bool { return strings.HasPrefix(domain, "[") }

// headerAddress parses the value of a From field holding exactly one
// mailbox and returns it normalized, or "" if it is anything else.
func headerAddress(value string) string {
	list, err := mail.ParseAddressList(value)
	if err != nil || len(list) != 1 {
		return ""
	}
	return normalize(list[0].Address)
}
