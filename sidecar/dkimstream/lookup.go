package dkimstream

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Lookup resolves DKIM key records: name is "<selector>._domainkey.<domain>".
// Errors that are temporary must be net.Error values with Temporary() true;
// every other error counts as "no key" (a permanent failure). A lookup
// gives up when ctx ends.
type Lookup interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// DNS looks keys up in the DNS with a timeout per query.
type DNS struct {
	Resolver *net.Resolver // nil means net.DefaultResolver
	Timeout  time.Duration
}

// LookupTXT implements Lookup.
func (d DNS) LookupTXT(ctx context.Context, name string) ([]string, error) {
	r := d.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	txt, err := r.LookupTXT(ctx, name)
	var de *net.DNSError
	if errors.As(err, &de) && (de.IsTimeout || errors.Is(err, context.Canceled)) {
		// A lookup that ran out of time is worth a retry, not a bounce.
		de.IsTemporary = true
	}
	return txt, err
}

// Cached remembers the records another Lookup found, for a while, so that
// a burst of mail from one domain costs one file read or DNS query.
// Failures are not remembered: a key published a moment later counts at
// once, and a temporary failure is retried. Make one with NewCached.
type Cached struct {
	lookup Lookup
	ttl    time.Duration
	now    func() time.Time // for tests

	mu      sync.Mutex
	records map[string]cachedRecord
}

type cachedRecord struct {
	txt     []string
	expires time.Time
}

// maxCached bounds the memory of a Cached; real traffic comes from far
// fewer signing domains.
const maxCached = 4096

// NewCached returns a cache in front of l that keeps records for ttl.
func NewCached(l Lookup, ttl time.Duration) *Cached {
	return &Cached{lookup: l, ttl: ttl, now: time.Now, records: make(map[string]cachedRecord)}
}

// LookupTXT implements Lookup.
func (c *Cached) LookupTXT(ctx context.Context, name string) ([]string, error) {
	key := strings.ToLower(strings.TrimSuffix(name, "."))
	now := c.now()
	c.mu.Lock()
	r, ok := c.records[key]
	c.mu.Unlock()
	if ok && now.Before(r.expires) {
		return slices.Clone(r.txt), nil
	}
	txt, err := c.lookup.LookupTXT(ctx, name)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.records) >= maxCached {
		for k, r := range c.records {
			if !now.Before(r.expires) {
				delete(c.records, k)
			}
		}
		if len(c.records) >= maxCached {
			clear(c.records)
		}
	}
	c.records[key] = cachedRecord{txt: txt, expires: now.Add(c.ttl)}
	return txt, nil
}

// Map serves key records from memory, for tests and private setups.
type Map map[string]string

// LookupTXT implements Lookup.
func (m Map) LookupTXT(_ context.Context, name string) ([]string, error) {
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
func (d Dir) LookupTXT(_ context.Context, name string) ([]string, error) {
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
