package turncred

import (
	"path/filepath"
	"strings"
	"testing"
)

// The known answer of the reference relay's TURN crate (chatmail-turn):
// username 1599491771, secret "foobar".
func TestPasswordKnownAnswer(t *testing.T) {
	if got := Password([]byte("foobar"), "1599491771"); got != "Tpz/nKkyvX/vMSLKvL4sbtBt8Vs=" {
		t.Errorf("Password = %q", got)
	}
}

func TestParseUsername(t *testing.T) {
	if v, err := ParseUsername("1599491771"); err != nil || v != 1599491771 || Username(v) != "1599491771" {
		t.Errorf("ParseUsername = %d, %v", v, err)
	}
	for _, bad := range []string{"", "0", "01599491771", "+1599491771", "-1", "1599491771:alice", " 1599491771", "1599491771 ", "1e9", "99999999999999999999", "１２３", "123456789012"} {
		if v, err := ParseUsername(bad); err == nil {
			t.Errorf("ParseUsername(%q) = %d, want an error", bad, v)
		}
	}
}

// Delta Chat splits the value at the first three colons.
func TestValueSplitsAsDeltaChatDoes(t *testing.T) {
	v := Value("turn.example.org", 3478, 1799999999, Password([]byte("s"), "1799999999"))
	host, rest, _ := strings.Cut(v, ":")
	port, rest, _ := strings.Cut(rest, ":")
	user, pass, _ := strings.Cut(rest, ":")
	if host != "turn.example.org" || port != "3478" || user != "1799999999" || pass != Password([]byte("s"), "1799999999") {
		t.Errorf("value %q splits into %q %q %q %q", v, host, port, user, pass)
	}
}

func TestLoadSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "turn.secret")
	a, err := LoadSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadSecret(path)
	if err != nil || string(a) != string(b) {
		t.Fatalf("second load: %v, same key %v", err, string(a) == string(b))
	}
	// The file's text as coturn's static-auth-secret would take it.
	if strings.TrimSpace(string(a)) != string(a) || len(a) != 64 {
		t.Errorf("secret %q", a)
	}
}

func FuzzParseUsername(f *testing.F) {
	for _, s := range []string{"1599491771", "0", "", "1599491771:x", "99999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseUsername(s)
		if err == nil && Username(v) != s {
			t.Errorf("%q parsed as %d, which is written %q", s, v, Username(v))
		}
	})
}
