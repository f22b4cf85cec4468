package masking

import (
	"strings"
	"testing"
)

// maskKept is Apply under No-Log for a line that must be kept.
func maskKept(t *testing.T, src Source, in string) string {
	t.Helper()
	out, keep, _ := Apply(Parse(src, []byte(in)), true)
	if !keep {
		t.Fatalf("dropped %q", in)
	}
	return out
}

const pfx = "Nov 29 11:20:28 mx postfix/smtp[123]: "

// A correspondent's domain beside a time says who mails whom: under No-Log
// no bare domain name survives in a kept line.
func TestBareDomainsMasked(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"warning: no MX host for carol-home.example has a valid address record",
			"warning: no MX host for - has a valid address record"},
		{"warning: numeric domain name in resource data of MX record for carol-home.example: 1.2.3.4",
			"warning: numeric domain name in resource data of MX record for -: -"},
		{"warning: malformed domain name in resource data of MX record for carol-home.example: mx..bad",
			"warning: malformed domain name in resource data of MX record for -: mx..bad"},
		{"warning: TLS policy lookup for other.test/mx.other.test: non-existent domain",
			"warning: TLS policy lookup for -/-: non-existent domain"},
		{"warning: DANE TLSA lookup problem: Host or domain name not found. Name service error for name=_25._tcp.mx.other.test type=TLSA: Host not found",
			"warning: DANE TLSA lookup problem: Host or domain name not found. Name service error for name=- type=TLSA: Host not found"},
		{"warning: mail for Xn--Bcher-kva.Example. loops back to myself",
			"warning: mail for -. loops back to myself"},
		{"warning: IDN xn--bcher-kva.xn--tckwe is not allowed", "warning: IDN - is not allowed"},
	} {
		if got := maskKept(t, Postfix, pfx+c.in); got != pfx+c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.in, got, pfx+c.want)
		}
	}
}

// What makes a kept line readable stays: the header, program names, file
// paths, versions, setting names, source files.
func TestStructureStays(t *testing.T) {
	for _, c := range []struct {
		src Source
		in  string
	}{
		{Postfix, "Nov 29 11:20:28 mail.chat.test postfix/smtpd[123]: warning: /etc/postfix/main.cf, line 12: overriding earlier entry: smtpd_tls_cert_file=/etc/ssl/certs/chat.test.pem"},
		{Postfix, "Nov 29 11:20:28 mx postfix/smtpd[123]: warning: cannot get RSA certificate from file \"/etc/postfix/tls/chat.test.crt\": disabling TLS support"},
		{Postfix, "Nov 29 11:20:28 mx postfix/smtpd[123]: warning: main.cf: unused parameter: smtpd_tls_cert_file"},
		{Postfix, "Nov 29 11:20:28 mx postfix/master[900]: daemon started -- version 3.10.1, configuration /etc/postfix"},
		// OpenSSL's error code has the shape of a queue id and goes.
		{Postfix, "Nov 29 11:20:30 mx postfix/smtp[28450]: warning: TLS library problem: error:-:SSL routines::certificate verify failed:../ssl/statem/statem_clnt.c:2091:"},
		{Postfix, "Nov 29 11:20:30 mx postfix/smtp[28450]: error: open database /etc/postfix/transport.lmdb: No such file or directory"},
		{Postfix, "Nov 29 11:20:30 mx postfix/smtp[28450]: warning: database /etc/postfix/virtual.db is older than source file /etc/postfix/virtual"},
		{Postfix, "Nov 29 11:20:30 mx postfix/smtpd[28450]: warning: smtpd_tls_security_level: unknown level may: using none; the default at 12:00:05"},
		{Dovecot, "<19>Nov 29 11:20:30 dovecot: master: Error: child 123 killed with signal 9 (mail-index.c, dovecot.conf)"},
		{Dovecot, "<22>Nov 29 11:20:30 dovecot: master: Dovecot v2.4.1-4 (7d8c0e5759) starting up for imap, lmtp (core dumps disabled)"},
		{Dovecot, "<19>Nov 29 11:20:30 dovecot: auth: Error: lua: /usr/local/lib/chatmail/chatmail-auth.lua: ssl_server_cert_file not set (TLSv1.3)"},
	} {
		l := Parse(c.src, []byte(c.in))
		if got := maskKept(t, c.src, c.in); got != l.Text {
			t.Errorf("changed:\n %q\n %q", l.Text, got)
		}
	}
}

// IPv6 in every form, also cut: "::" at the end (no word boundary after
// it), an IPv4 tail, an unclosed bracket.
func TestIPv6Forms(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"warning: 2001:db8:85a3:: address not listed for hostname", "warning: - address not listed for hostname"},
		{"warning: address not listed for 2001:db8:85a3::", "warning: address not listed for -"},
		{"warning: connect from unknown[2001:db8:85a3:1:2:3", "warning: connect from unknown[-"},
		{"warning: connect from unknown[2001:db8", "warning: connect from unknown[-"},
		{"warning: connect from unknown[192.0.2", "warning: connect from unknown[-"},
		{"warning: peer 2001:db8:1:2:3:4:192.0.2.1 rejected", "warning: peer - rejected"},
		{"warning: peer ::ffff:192.0.2.1 rejected", "warning: peer - rejected"},
		{"warning: peer 2001:db8:85a3:1:2:3 rejected", "warning: peer - rejected"},
		{"warning: peer IPv6:2001:db8::1 rejected", "warning: peer IPv6:- rejected"},
		{"warning: peer fe80::1%eth0 rejected", "warning: peer -%eth0 rejected"},
	} {
		if got := maskKept(t, Postfix, pfx+c.in); got != pfx+c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.in, got, pfx+c.want)
		}
	}
}

// A quoted local part is an address as a whole, whatever it quotes.
func TestQuotedLocalPart(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`warning: Illegal address syntax from unknown[-] in MAIL command: <"x>carol"@other.test>`,
			`warning: Illegal address syntax from unknown[-] in MAIL command: <->`},
		{`warning: -[-]: SASL PLAIN authentication failed: (reason unavailable), sasl_username="bob smith"@chat.test`,
			`warning: -[-]: SASL PLAIN authentication failed: (reason unavailable), sasl_username=-`},
		{`warning: header From: "Carol \"C\" <x" <"carol, jr"@other.test> rejected`,
			`warning: header From: "Carol \"C\" <x" <-> rejected`},
	} {
		got := maskKept(t, Postfix, pfx+c.in)
		if got != pfx+c.want {
			t.Errorf("%q:\n got %q\nwant %q", c.in, got, pfx+c.want)
		}
		for _, w := range []string{"carol", "smith", "other.test", "chat.test"} {
			if strings.Contains(got, w) {
				t.Errorf("%q left in %q", w, got)
			}
		}
	}
}

// A long kept line is cut before masking, at a space, and says so; a
// short one is not.
func TestLongLinesCut(t *testing.T) {
	long := pfx + "warning: non-SMTP command from unknown[192.0.2.1]: " + strings.Repeat("carol@other.test ", 500)
	out, keep, masked := Apply(Parse(Postfix, []byte(long)), true)
	if !keep || !masked || len(out) > MaxKept+len(CutMark) || !strings.HasSuffix(out, CutMark) {
		t.Fatalf("len %d keep %v masked %v: %q", len(out), keep, masked, out)
	}
	if strings.Contains(out, "carol") || strings.Contains(out, "other") {
		t.Errorf("a fragment of an address survived: %q", out)
	}
	// Without a space in the last quarter: cut at a UTF-8 boundary.
	runes := pfx + "warning: " + strings.Repeat("é", 1000)
	c, cut := Cut(runes)
	if !cut || len(c) > MaxKept || !strings.HasSuffix(c, "é") {
		t.Errorf("cut %v, %d bytes, ends %q", cut, len(c), c[len(c)-4:])
	}
	short := pfx + "warning: no MX host for - has a valid address record"
	if out, _, masked := Apply(Parse(Postfix, []byte(short)), true); out != short || masked {
		t.Errorf("short line changed: %q", out)
	}
	// No-Log off: nothing is cut.
	if out, _, _ := Apply(Parse(Postfix, []byte(long)), false); out != long[:min(len(long), MaxLine)] {
		t.Errorf("No-Log off cut the line to %d bytes", len(out))
	}
}
