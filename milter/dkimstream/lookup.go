package dkimstream

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Lookup resolves DKIM key records: name is "<selector>._domainkey.<domain>".
// Errors that are temporary must be net.Error values with Temporary() true;
// every other error counts as "no key" (a permanent failure).
type Lookup interface {
	LookupTXT(name string) ([]string, error)
}

// DNS looks keys up in the DNS with a timeout per query.
type DNS struct {
	Resolver *net.Resolver // nil means net.DefaultResolver
	Timeout  time.Duration
}

// LookupTXT implements Lookup.
func (d DNS) LookupTXT(name string) ([]string, error) {
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	txt, err := r.LookupTXT(ctx, name)
	var de *net.DNSError
	if errors.As(err, &de) && de.IsTimeout {
		de.IsTemporary = true // a timeout is worth a retry, not a bounce
	}
	return txt, err
}

// Map serves key records from memory, for tests and private setups.
type Map map[string]string

// LookupTXT implements Lookup.
func (m Map) LookupTXT(name string) ([]string, error) {
	if v, ok := m[strings.ToLower(strings.TrimSuffix(name, "."))]; ok {
		return []string{v}, nil
	}
	return nil, &net.DNSError{Err: "no such key", Name: name, IsNotFound: true}
}

// Dir serves key records from files named "<selector>._domainkey.<domain>"
// in a directory, each holding the TXT record data, either bare or as the
// quoted strings of a zone file ("v=DKIM1; k=rsa; " "p=MIIB...").
type Dir string

// LookupTXT implements Lookup.
func (d Dir) LookupTXT(name string) ([]string, error) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return nil, &net.DNSError{Err: "bad name", Name: name, IsNotFound: true}
	}
	data, err := os.ReadFile(filepath.Join(string(d), name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &net.DNSError{Err: "no such key", Name: name, IsNotFound: true}
	}
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: name, IsTemporary: true}
	}
	return []string{ParseRecord(string(data))}, nil
}

// ParseRecord joins the quoted strings of a zone-file TXT record, or
// returns bare text trimmed.
func ParseRecord(s string) string {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, `"`) {
		return s
	}
	var b strings.Builder
	in, esc := false, false
	for _, c := range s {
		switch {
		case esc:
			b.WriteRune(c)
			esc = false
		case in && c == '\\':
			esc = true
		case c == '"':
			in = !in
		case in:
			b.WriteRune(c)
		}
	}
	return b.String()
}
