package dkimstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseRecord(t *testing.T) {
	for in, want := range map[string]string{
		"v=DKIM1; p=abc\n":                     "v=DKIM1; p=abc",
		`"v=DKIM1; k=rsa; " "p=MIIB"`:          "v=DKIM1; k=rsa; p=MIIB",
		"s1 IN TXT ( \"v=DKIM1; \"\n\"p=x\" )": "v=DKIM1; p=x",
		`"a\"b"`:                               `a"b`,
	} {
		if got := ParseRecord(in); got != want {
			t.Errorf("ParseRecord(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s1._domainkey.chat.example"), []byte(`"v=DKIM1; " "p=x"`), 0o644); err != nil {
		t.Fatal(err)
	}
	d := Dir(dir)
	if txt, err := d.LookupTXT(ctx, "s1._domainkey.Chat.Example."); err != nil || len(txt) != 1 || txt[0] != "v=DKIM1; p=x" {
		t.Fatalf("%q %v", txt, err)
	}
	for _, name := range []string{"s2._domainkey.chat.example", "../etc/passwd", ".hidden"} {
		_, err := d.LookupTXT(ctx, name)
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound || de.Temporary() {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// counting counts lookups and answers from a Map.
type counting struct {
	Map
	n int
}

func (c *counting) LookupTXT(ctx context.Context, name string) ([]string, error) {
	c.n++
	return c.Map.LookupTXT(ctx, name)
}

func TestCached(t *testing.T) {
	ctx := context.Background()
	src := &counting{Map: Map{"s1._domainkey.chat.example": "v=DKIM1; p=x"}}
	c := NewCached(src, time.Minute)
	now := time.Unix(1e9, 0)
	c.now = func() time.Time { return now }
	for _, name := range []string{"s1._domainkey.chat.example", "S1._domainkey.Chat.Example."} {
		if txt, err := c.LookupTXT(ctx, name); err != nil || len(txt) != 1 || txt[0] != "v=DKIM1; p=x" {
			t.Fatalf("%s: %q %v", name, txt, err)
		}
	}
	if src.n != 1 {
		t.Fatalf("%d lookups for one name within the TTL", src.n)
	}
	// Misses are not remembered: a key published later counts at once.
	if _, err := c.LookupTXT(ctx, "s2._domainkey.chat.example"); err == nil {
		t.Fatal("found a key that does not exist")
	}
	src.Map["s2._domainkey.chat.example"] = "v=DKIM1; p=y"
	if txt, err := c.LookupTXT(ctx, "s2._domainkey.chat.example"); err != nil || txt[0] != "v=DKIM1; p=y" {
		t.Fatalf("new key: %q %v", txt, err)
	}
	// A changed key counts after the TTL.
	src.Map["s1._domainkey.chat.example"] = "v=DKIM1; p=z"
	now = now.Add(time.Minute)
	if txt, _ := c.LookupTXT(ctx, "s1._domainkey.chat.example"); txt[0] != "v=DKIM1; p=z" {
		t.Fatalf("after the TTL: %q", txt)
	}
	// The cache stays bounded.
	for i := range maxCached + 10 {
		src.Map[fmt.Sprintf("s%d._domainkey.x.example", i)] = "v=DKIM1; p=x"
		if _, err := c.LookupTXT(ctx, fmt.Sprintf("s%d._domainkey.x.example", i)); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.records) > maxCached {
		t.Fatalf("%d records cached", len(c.records))
	}
}
