package config

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
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

func TestTurnDefaults(t *testing.T) {
	for _, c := range []struct{ text, host, realm string }{
		// A bracketed IPv4 domain is served to clients as the bare address.
		{"[mail]\ndomains = [\"[1.2.3.4]\", \"a.b\"]", "1.2.3.4", "1.2.3.4"},
		{"[mail]\ndomains = [\"chat.example.org\"]", "chat.example.org", "chat.example.org"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhost = \"127.0.0.1\"\nrealm = \"r\"", "127.0.0.1", "r"},
	} {
		cfg, err := Parse(c.text, "doveauth", nil)
		if err != nil {
			t.Fatalf("%q: %v", c.text, err)
		}
		if cfg.Turn.Host != c.host || cfg.Turn.Realm != c.realm || cfg.Turn.Port != 3478 || cfg.Turn.Lifetime.D() != 120*time.Hour {
			t.Errorf("%q: %+v", c.text, cfg.Turn)
		}
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
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhost = \"[1.2.3.4]\"", "turn.host"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhost = \"::1\"", "turn.host"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhost = \"1.2.3.400\"", "turn.host"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhost = \"turn.a.b:3478\"", "turn.host"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nlifetime = \"12h\"", "turn.lifetime"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nport = 0", "turn.port"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nsecret_file = \"turn.secret\"", "turn.secret_file"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nrealm = \"a\\\"b\"", "turn.realm"},
		{"[mail]\ndomains = [\"a.b\"]\n[turn]\nhots = \"a.b\"", "turn.hots"},
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

// chatmail.toml.example shows the defaults: parsed, it gives Defaults()
// apart from what must be set (the domain and the DSN).
func TestExampleShowsTheDefaults(t *testing.T) {
	b, err := os.ReadFile("../../chatmail.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(string(b), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	want.Mail = c.Mail
	want.Postgres.DSN = c.Postgres.DSN
	// Derived from the first domain when left empty, as the example does.
	want.Turn.Host, want.Turn.Realm = c.Mail.Domains[0], c.Mail.Domains[0]
	if !reflect.DeepEqual(*c, want) {
		t.Errorf("the example's common sections differ from the defaults:\nexample  %+v\ndefaults %+v", *c, want)
	}
}

func TestAccountLimits(t *testing.T) {
	for _, c := range []struct{ text, key string }{
		{"password_max_length = 8", "accounts.password_max_length"},
		{"password_max_length = 1025", "accounts.password_max_length"},
		{"create_burst = 0", "accounts.create_burst"},
		{"create_per_minute = -1", "accounts.create_per_minute"},
		{`tombstone_key_file = "key"`, "accounts.tombstone_key_file"},
		{`tombstone_lifetime = "-1h"`, "accounts.tombstone_lifetime"},
	} {
		_, err := Parse("[mail]\ndomains = [\"a.b\"]\n[accounts]\n"+c.text, "", nil)
		var ce *Error
		if !errors.As(err, &ce) || ce.Key != c.key {
			t.Errorf("%s: %v, want an error naming %s", c.text, err, c.key)
		}
	}
	c, err := Parse("[mail]\ndomains = [\"a.b\"]\n[accounts]\ntombstone_lifetime = \"8760h\"\ncreate_per_minute = 0\nlocalpart_punctuation = true", "", nil)
	if err != nil || c.Accounts.TombstoneLifetime.D() != 8760*time.Hour || c.Accounts.CreatePerMinute != 0 || !c.Accounts.LocalpartPunctuation {
		t.Errorf("%+v %v", c, err)
	}
}
