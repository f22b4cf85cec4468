package config

import (
	"strings"
	"testing"
)

type daemonSection struct {
	Socket string `toml:"socket"`
}

func (d *daemonSection) Validate() error {
	if d.Socket == "" {
		return &Error{Key: "socket", Msg: "must be set"}
	}
	return nil
}

func TestParse(t *testing.T) {
	sec := daemonSection{Socket: "/run/x"}
	c, err := Parse(`
[mail]
domains = ["chat.example.org", "[1.2.3.4]"]
[accounts]
registration = "closed"
[milter]
anything = "belongs to another daemon"
`, "doveauth", &sec)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Mail.Serves("chat.example.org") || c.Mail.Serves("example.org") || c.Accounts.Registration != "closed" ||
		c.Accounts.LocalpartMinLength != 9 || c.Postgres.QueryTimeout.D().Seconds() != 2 || sec.Socket != "/run/x" {
		t.Errorf("parsed %+v, section %+v", c, sec)
	}
}

func TestParseErrorsNameTheKey(t *testing.T) {
	for _, c := range []struct{ text, key string }{
		{`[mail]`, "mail.domains"},
		{"[mail]\ndomains = [\"Chat.Example\"]", "mail.domains"},
		{"[mail]\ndomains = [\"a.b\"]\n[accounts]\nregistraton = \"open\"", "accounts.registraton"},
		{"[mail]\ndomains = [\"a.b\"]\n[accounts]\nregistration = \"maybe\"", "accounts.registration"},
		{"[mail]\ndomains = [\"a.b\"]\n[accounts]\nlocalpart_max_length = 3", "accounts.localpart_max_length"},
		{"[mail]\ndomains = [\"a.b\"]\n[accounts]\npassword_scheme = \"PLAIN\"", "accounts.password_scheme"},
		{"[mail]\ndomains = [\"a.b\"]\n[postgres]\nquery_timeout = \"soon\"", "postgres"},
		{"[mail]\ndomains = [\"a.b\"]\n[doveauth]\nsocket = \"\"", "doveauth.socket"},
		{"[mail]\ndomains = [\"a.b\"]\n[doveauth]\nsockt = \"/x\"", "doveauth.sockt"},
		{"[mail]\ndomains = [\"a.b\"]\n[dovauth]", "dovauth"},
		{"[mail\n", ""},
	} {
		sec := daemonSection{Socket: "/run/x"}
		_, err := Parse(c.text, "doveauth", &sec)
		ce, ok := err.(*Error)
		if !ok || !IsError(err) {
			t.Errorf("%q: got %v, want a config error", c.text, err)
			continue
		}
		if !strings.HasPrefix(ce.Key, c.key) {
			t.Errorf("%q: error %q names key %q, want %q", c.text, err, ce.Key, c.key)
		}
	}
}

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:9100": true, "[::1]:9100": true, "localhost:1": true, "0.0.0.0:9100": false, "10.0.0.1:9100": false, "127.0.0.1": false, "127.0.0.1:x": false} {
		if err := CheckLoopback("metrics", addr); (err == nil) != ok {
			t.Errorf("CheckLoopback(%q) = %v", addr, err)
		}
	}
}

func TestFileMode(t *testing.T) {
	var m FileMode
	if err := m.UnmarshalText([]byte("0660")); err != nil || m != 0o660 {
		t.Errorf("0660 → %o, %v", m, err)
	}
	if err := m.UnmarshalText([]byte("999")); err == nil {
		t.Error("999 accepted as a mode")
	}
}
