package mimescan

import (
	"bytes"
	"strings"
	"testing"
)

func TestMsgIDs(t *testing.T) {
	for _, c := range []struct {
		v   string
		max int
		ok  bool
	}{
		{"<uuid@localhost>", 1, true},
		{"<Mr.a.b@chat.example>  <c@[127.0.0.1]>", 2, true},
		{"<a@b> <c@d>", 1, false},
		{"<a b@c>", 1, false},
		{"<a@b> (comment)", 2, false},
		{"<\"quoted\"@b>", 1, false},
		{"<a@[b]c]>", 1, false},
		{"<" + strings.Repeat("a", MaxMsgID) + "@b>", 1, false},
		{"", 1, false},
	} {
		if _, ok := ParseMsgIDs(c.v, c.max); ok != c.ok {
			t.Errorf("%q: got %v", c.v, ok)
		}
	}
}

func TestToken(t *testing.T) {
	for _, c := range []struct {
		v  string
		ok bool
	}{{"encrypted.asc", true}, {"utf-8", true}, {"a b", false}, {"", false}, {strings.Repeat("x", 17), false}} {
		if Token(c.v, 16) != c.ok {
			t.Errorf("%q: want %v", c.v, c.ok)
		}
	}
}

func TestLines(t *testing.T) {
	var s Lines
	var got []string
	for _, chunk := range []string{"ab", "c\r\nd", "e\nf"} {
		for p := []byte(chunk); ; {
			l, rest, ok, overlong := s.Next(p)
			if overlong {
				t.Fatal("short line taken for overlong")
			}
			if !ok {
				break
			}
			got = append(got, string(l))
			p = rest
		}
	}
	if strings.Join(got, "|") != "abc\r\n|de\n" || string(s.Rest()) != "f" {
		t.Fatalf("got %q", got)
	}
	if _, _, _, overlong := s.Next(bytes.Repeat([]byte("x"), MaxLine+1)); !overlong {
		t.Fatal("an overlong line was accepted")
	}
	if s.Cap() > MaxLine {
		t.Fatalf("buffer grew to %d", s.Cap())
	}
}

func TestDelimiter(t *testing.T) {
	dash := []byte("--b")
	for _, c := range []struct {
		l               string
		d, closing, bad bool
	}{
		{"--b\r\n", true, false, false},
		{"--b \t\r\n", true, false, false},
		{"--b--\r\n", true, true, false},
		{"--bx\r\n", false, false, true},
		{"--b--x\r\n", false, false, true},
		{"x--b\r\n", false, false, false},
	} {
		d, closing, bad := Delimiter([]byte(c.l), dash)
		if d != c.d || closing != c.closing || bad != c.bad {
			t.Errorf("%q: got %v %v %v", c.l, d, closing, bad)
		}
	}
}

func TestEachField(t *testing.T) {
	var names []string
	ok := EachField([]byte("A: 1\r\nB: 2\r\n  more\r\n"), func(n, v []byte) bool {
		names = append(names, string(n)+"="+string(v))
		return true
	})
	if !ok || strings.Join(names, ",") != "A=1,B=2 more" {
		t.Fatalf("got %v %v", ok, names)
	}
	for _, h := range []string{" cont: x\r\n", "-x: y\r\n", "no colon\r\n", "a b: c\r\n"} {
		if EachField([]byte(h), func(_, _ []byte) bool { return true }) {
			t.Errorf("%q accepted", h)
		}
	}
}
