package dkimstream

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
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
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "s1._domainkey.chat.example"), []byte(`"v=DKIM1; " "p=x"`), 0o644); err != nil {
		t.Fatal(err)
	}
	d := Dir(dir)
	if txt, err := d.LookupTXT("s1._domainkey.Chat.Example."); err != nil || len(txt) != 1 || txt[0] != "v=DKIM1; p=x" {
		t.Fatalf("%q %v", txt, err)
	}
	for _, name := range []string{"s2._domainkey.chat.example", "../etc/passwd", ".hidden"} {
		_, err := d.LookupTXT(name)
		var de *net.DNSError
		if !errors.As(err, &de) || !de.IsNotFound || de.Temporary() {
			t.Errorf("%s: %v", name, err)
		}
	}
}
