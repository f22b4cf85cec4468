package mailpolicy

import (
	"math"
	"strings"
	"time"

	"chatmail.dev/sidecar/config"
)

// Config holds the settings of the mail rules. The daemons that apply them
// embed it in their sections (chatmail-milter: [milter]):
//
//	rate_burst = 10          # messages a sender may send at once...
//	rate_per_second = 1.0    # ...then this many per second
//	max_recipients = 50      # per message; keep >= the advertised maxsmtprecipients
//	verify_dkim = true       # incoming mail needs an aligned DKIM signature
//	dkim_keys_dir = ""       # "" = DNS; else files <selector>._domainkey.<domain>
//	dns_timeout = "10s"
//	dkim_selector = "dkim"   # signing key for every chatmail domain...
//	dkim_key_file = "/etc/chatmail/dkim.key"
//	[milter.dkim_domains."example.org"]  # ...or per domain
//	selector = "opendkim"
//	key_file = "/etc/dkimkeys/opendkim.private"
type Config struct {
	RateBurst     int             `toml:"rate_burst"`
	RatePerSecond float64         `toml:"rate_per_second"`
	MaxRecipients int             `toml:"max_recipients"`
	VerifyDKIM    bool            `toml:"verify_dkim"`
	DKIMKeysDir   string          `toml:"dkim_keys_dir"`
	DNSTimeout    config.Duration `toml:"dns_timeout"`
	// DKIMSelector and DKIMKeyFile sign mail of every chatmail domain that
	// has no entry in DKIMDomains. Leave both empty to sign nothing.
	DKIMSelector string             `toml:"dkim_selector"`
	DKIMKeyFile  string             `toml:"dkim_key_file"`
	DKIMDomains  map[string]DKIMKey `toml:"dkim_domains"`
}

// DKIMKey names a domain's signing key.
type DKIMKey struct {
	Selector string `toml:"selector"`
	KeyFile  string `toml:"key_file"`
}

// Defaults returns the section before the file is applied.
func Defaults() Config {
	return Config{
		RateBurst:     10,
		RatePerSecond: 1,
		// Delta Chat splits its recipients into batches of maxsmtprecipients,
		// 50 by default.
		MaxRecipients: 50,
		VerifyDKIM:    true,
		DNSTimeout:    config.Duration(10 * time.Second),
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if c.RateBurst < 1 {
		return &config.Error{Key: "rate_burst", Msg: "must be at least 1"}
	}
	if !(c.RatePerSecond > 0) || math.IsInf(c.RatePerSecond, 0) {
		return &config.Error{Key: "rate_per_second", Msg: "must be positive"}
	}
	if c.MaxRecipients < 1 {
		return &config.Error{Key: "max_recipients", Msg: "must be at least 1"}
	}
	if c.DNSTimeout <= 0 {
		return &config.Error{Key: "dns_timeout", Msg: "must be positive"}
	}
	if (c.DKIMSelector == "") != (c.DKIMKeyFile == "") {
		return &config.Error{Key: "dkim_selector", Msg: "set dkim_selector and dkim_key_file together"}
	}
	for d, k := range c.DKIMDomains {
		if d != strings.ToLower(d) || k.Selector == "" || k.KeyFile == "" {
			return &config.Error{Key: "dkim_domains." + d, Msg: "needs a lower-case domain, selector and key_file"}
		}
	}
	return nil
}
