package server

import (
	"testing"

	"chatmail.dev/sidecar/config"
)

func TestDefaultsValid(t *testing.T) {
	c := Defaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	text := "[mail]\ndomains = [\"chat.example\"]\n[mxdeliv]\nlisten = \"inet:127.0.0.1:10082\"\ntls_listen = \"inet:127.0.0.1:8443\"\n"
	if _, err := config.Parse(text, "mxdeliv", &c); err == nil || !config.IsError(err) {
		t.Errorf("tls_listen without files: %v", err)
	}
	c = Defaults()
	if _, err := config.Parse(text+"tls_cert_file = \"/c\"\ntls_key_file = \"/k\"\nrequest_timeout = \"2m\"\n", "mxdeliv", &c); err == nil {
		t.Error("request_timeout beyond the drain accepted")
	}
}

// TestPolicyFromMilter checks that the rules' settings come from [milter],
// its own keys ignored, and that signing keys are dropped.
func TestPolicyFromMilter(t *testing.T) {
	p, err := ParsePolicyConfig(`
[mail]
domains = ["chat.example"]
[milter]
listen = "unix:/run/m.sock"
verify_dkim = false
dns_timeout = "3s"
dkim_selector = "s"
dkim_key_file = "/etc/k"
[mxdeliv]
listen = "inet:127.0.0.1:1"
`)
	if err != nil {
		t.Fatal(err)
	}
	if p.VerifyDKIM || p.DNSTimeout.D().String() != "3s" || p.DKIMKeyFile != "" || p.RateBurst != 10 {
		t.Errorf("%+v", p)
	}
	if p, err := ParsePolicyConfig("[mail]\ndomains = [\"chat.example\"]\n"); err != nil || !p.VerifyDKIM {
		t.Errorf("no [milter]: %+v %v", p, err)
	}
	if _, err := ParsePolicyConfig("[milter]\ndns_timeout = \"0s\"\n"); err == nil {
		t.Error("bad [milter] accepted")
	}
}
