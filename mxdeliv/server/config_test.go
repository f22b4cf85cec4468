package server

import (
	"testing"
	"time"

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

func TestExample(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "mxdeliv", Defaults); err != nil {
		t.Fatal(err)
	}
}

// TestSenderKeys: the sender's keys are checked only with lmtp_listen, and
// map onto sender.Config.
func TestSenderKeys(t *testing.T) {
	base := "[mail]\ndomains = [\"chat.example\"]\n[mxdeliv]\n"
	for _, bad := range []string{
		"lmtp_listen = \"rel.sock\"\nhostname = \"mx.chat.example\"\n",
		"lmtp_listen = \"/run/l.sock\"\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\nca_file = \"ca.pem\"\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\nhttp_timeout = \"0s\"\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\nhttp_timeout = \"10m\"\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\ndestination_concurrency = 0\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\ndelivery_timeout = \"13m\"\n",
		"lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\ninsecure_tls_domains = [\"a@b\"]\n",
	} {
		c := Defaults()
		if _, err := config.Parse(base+bad, "mxdeliv", &c); err == nil || !config.IsError(err) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
	c := Defaults()
	if _, err := config.Parse(base+"hostname = \"\"\ndestination_concurrency = 0\n", "mxdeliv", &c); err != nil {
		t.Errorf("sender keys checked without lmtp_listen: %v", err)
	}
	c = Defaults()
	text := base + "lmtp_listen = \"/run/l.sock\"\nhostname = \"mx.chat.example\"\nca_file = \"/etc/ca.pem\"\n" +
		"insecure_tls_domains = [\"Test.Example\"]\nconnect_timeout = \"3s\"\nhttp_timeout = \"4s\"\n" +
		"delivery_timeout = \"5s\"\nsmtp_only_ttl = \"0s\"\ndestination_concurrency = 7\n"
	if _, err := config.Parse(text, "mxdeliv", &c); err != nil {
		t.Fatal(err)
	}
	sc := SenderConfig(&c)
	if sc.Hostname != "mx.chat.example" || sc.ConnectTimeout != 3*time.Second || sc.HTTPTimeout != 4*time.Second ||
		sc.DeliveryTimeout != 5*time.Second || sc.SMTPOnlyTTL >= 0 || sc.DestinationConcurrency != 7 ||
		len(sc.InsecureTLSDomains) != 1 || sc.HTTPSPort != 0 || sc.SMTPPort != 0 {
		t.Errorf("%+v", sc)
	}
}
