package server

import (
	"testing"

	"chatmail.dev/sidecar/config"
)

// TestConfig checks the [milter] section: its own keys and the embedded
// rules, read from one table.
func TestConfig(t *testing.T) {
	text := `[mail]
domains = ["chat.example"]
[milter]
listen = "inet:127.0.0.1:12001"
metrics = "127.0.0.1:0"
rate_burst = 5
[milter.dkim_domains."chat.example"]
selector = "s"
key_file = "/nonexistent"
`
	cfg := Defaults()
	if _, err := config.Parse(text, "milter", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "inet:127.0.0.1:12001" || cfg.RateBurst != 5 || cfg.DKIMDomains["chat.example"].Selector != "s" || cfg.MaxRecipients != 50 {
		t.Fatalf("%+v", cfg)
	}
	for _, bad := range []string{
		`listen = "tcp:1"`,
		`metrics = "0.0.0.0:9725"`,
		`rate_per_second = 0.0`,
		`no_such_key = 1`,
	} {
		cfg := Defaults()
		if _, err := config.Parse("[mail]\ndomains=[\"a.example\"]\n[milter]\n"+bad+"\n", "milter", &cfg); !config.IsError(err) {
			t.Errorf("%s: got %v", bad, err)
		}
	}
}

// TestExampleIsDefaults: chatmail.toml.example shows the [milter] defaults.
func TestExampleIsDefaults(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "milter", Defaults); err != nil {
		t.Error(err)
	}
}
