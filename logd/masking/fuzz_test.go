package masking

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzMask: no panic, a masked line is never longer than the line, masking
// is idempotent, and No-Log off changes nothing but the PRI.
func FuzzMask(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.log"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			f.Add(line, strings.HasPrefix(filepath.Base(p), "dovecot"))
		}
	}
	f.Fuzz(func(t *testing.T, in string, dovecot bool) {
		src := Postfix
		if dovecot {
			src = Dovecot
		}
		l := Parse(src, []byte(in))
		if len(l.Text) > len(in) {
			t.Fatalf("parse grew the line: %q -> %q", in, l.Text)
		}
		m := Mask(src, l.Text)
		if len(m) > len(l.Text) {
			t.Fatalf("mask grew the line: %q -> %q", l.Text, m)
		}
		if again := Mask(src, m); again != m {
			t.Fatalf("not idempotent: %q -> %q -> %q", l.Text, m, again)
		}
		// No-Log off changes nothing but a password (Secrets).
		if out, keep, _ := Apply(l, false); !keep || out != Secrets(src, l.Text) || len(out) > len(l.Text) {
			t.Fatalf("No-Log off changed %q", l.Text)
		}
		// Under No-Log a kept line is cut, then masked.
		want := m
		if c, cut := Cut(l.Text); cut {
			want = Mask(src, c) + CutMark
		}
		if out, keep, _ := Apply(l, true); keep && (out != want || len(out) > MaxKept+len(CutMark)) {
			t.Fatalf("Apply differs from Mask")
		}
	})
}
