package mailpolicy

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/dkimstream"
)

const (
	alice = "alice@chat.example"
	bob   = "bob@chat.example"
	carol = "carol@other.example"
)

func testEngine(t testing.TB, edit func(*Config)) *Engine {
	t.Helper()
	cfg := Defaults()
	cfg.VerifyDKIM = false
	if edit != nil {
		edit(&cfg)
	}
	common := config.Defaults()
	common.Mail.Domains = []string{"chat.example", "group.chat.example"}
	e, err := NewEngine(&common, &cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

type envelope struct {
	auth, from string
	rcpts      []string
}

// run drives one transaction over a message and returns the final or
// first refusing verdict.
func run(t testing.TB, e *Engine, env envelope, msg []byte) *Verdict {
	t.Helper()
	txn := e.Begin(env.auth, env.from)
	defer txn.Close()
	accepted := 0
	var refused *Verdict
	for _, r := range env.rcpts {
		if v := txn.Rcpt(r); v != nil {
			refused = v
			continue
		}
		accepted++
	}
	if accepted == 0 {
		return refused
	}
	v, err := Replay(context.Background(), txn, bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRules(t *testing.T) {
	out := envelope{alice, alice, []string{carol}}
	outLocal := envelope{alice, alice, []string{bob}}
	in := envelope{"", carol, []string{bob}}
	inNull := envelope{"", "", []string{bob}}
	cases := []struct {
		name string
		file string
		env  envelope
		code int
		why  Reason
	}{
		{"encrypted out", "enc-v4.eml", outLocal, 250, ReasonEncrypted},
		{"encrypted out v6", "enc-v6.eml", out, 250, ReasonEncrypted},
		{"encrypted skesk", "enc-skesk-v6.eml", out, 250, ReasonEncrypted},
		{"encrypted large", "enc-large-v6.eml", out, 250, ReasonEncrypted},
		{"encrypted LF input", "enc-lf.eml", out, 250, ReasonEncrypted},
		// Captured from Delta Chat 2.62 through our stack (hidden recipients, PKESK v6 + SEIPD v2).
		{"delta chat 2.62 out", "enc-dc-2.62-text.eml", outLocal, 250, ReasonEncrypted},
		{"delta chat 2.62 out 2", "enc-dc-2.62-text2.eml", out, 250, ReasonEncrypted},
		{"delta chat 2.62 in", "enc-dc-2.62-text.eml", envelope{"", alice, []string{bob}}, 250, ReasonEncrypted},
		{"plain out", "neg-plain.eml", out, 523, ReasonCleartext},
		{"literal out", "neg-literal.eml", out, 523, ReasonCleartext},
		{"fake armor out", "neg-fake-armor.eml", out, 523, ReasonCleartext},
		{"mdn out", "mdn.eml", outLocal, 523, ReasonCleartext},
		{"securejoin vc out", "securejoin-vc.eml", out, 250, ReasonSecureJoin},
		{"securejoin vg out", "securejoin-vg.eml", out, 250, ReasonSecureJoin},
		{"securejoin fake", "securejoin-fake.eml", out, 523, ReasonCleartext},
		{"securejoin mismatch", "securejoin-mismatch.eml", out, 523, ReasonCleartext},
		{"securejoin pubkey in clear", "securejoin-pubkey.eml", out, 523, ReasonCleartext},
		{"securejoin two parts", "securejoin-two-parts.eml", out, 523, ReasonCleartext},
		{"securejoin older client shape in", "securejoin-vc-older.eml", envelope{"", alice, []string{bob}}, 250, ReasonSecureJoin},
		{"securejoin delimiter prefix", "securejoin-delimiter-prefix.eml", out, 523, ReasonCleartext},
		{"securejoin rfc 2231 boundary", "securejoin-rfc2231-boundary.eml", out, 523, ReasonCleartext},
		{"securejoin quoted semicolon", "securejoin-quoted-semicolon.eml", out, 523, ReasonCleartext},
		{"securejoin extra text", "securejoin-extra-text.eml", out, 523, ReasonCleartext},
		{"armor comment out", "enc-armor-headers.eml", out, 523, ReasonCleartext},
		{"armor comment in", "enc-armor-headers.eml", envelope{"", alice, []string{bob}}, 250, ReasonEncrypted},
		{"long armor header in", "neg-long-armor-header.eml", envelope{"", alice, []string{bob}}, 523, ReasonCleartext},
		// No Delta Chat core of the matrix sends it any more: no exception.
		{"setup message to self", "asm.eml", envelope{alice, alice, []string{alice}}, 523, ReasonCleartext},
		{"setup message to other", "asm.eml", envelope{alice, alice, []string{alice, bob}}, 523, ReasonCleartext},
		{"setup message incoming", "asm.eml", envelope{"", carol, []string{alice}}, 523, ReasonCleartext},
		{"bounce out", "bounce.eml", out, 554, ReasonBadFrom},

		{"encrypted in", "enc-v4.eml", envelope{"", alice, []string{bob}}, 250, ReasonEncrypted},
		{"plain in", "neg-plain.eml", in, 523, ReasonCleartext},
		{"mdn in", "mdn.eml", in, 523, ReasonCleartext},
		{"securejoin in", "securejoin-vc.eml", in, 250, ReasonSecureJoin},
		{"bounce in", "bounce.eml", inNull, 250, ReasonBounce},
		{"bounce with sender", "bounce.eml", in, 523, ReasonCleartext},
		{"bounce mdn shape", "bounce-mdn.eml", inNull, 523, ReasonCleartext},
		{"bounce Auto-Submitted no", "bounce-not-auto.eml", inNull, 523, ReasonCleartext},
		{"bounce not daemon", "bounce-not-daemon.eml", inNull, 523, ReasonCleartext},
		{"plain in to other domain", "neg-plain.eml", envelope{"", carol, []string{"dave@elsewhere.example"}}, 250, ReasonNotChatmail},
		{"plain in mixed recipients", "neg-plain.eml", envelope{"", carol, []string{"dave@elsewhere.example", bob}}, 523, ReasonCleartext},
		// Recipients the MTA may rewrite into a chatmail address are in scope.
		{"percent hack", "neg-plain.eml", envelope{"", carol, []string{"bob%chat.example@[127.0.0.1]"}}, 523, ReasonCleartext},
		{"bang path", "neg-plain.eml", envelope{"", carol, []string{"chat.example!bob@[127.0.0.1]"}}, 523, ReasonCleartext},
		{"bang path other domain", "neg-plain.eml", envelope{"", carol, []string{"chat.example!bob@elsewhere.example"}}, 523, ReasonCleartext},
		{"source route", "neg-plain.eml", envelope{"", carol, []string{"@chat.example:bob@chat.example"}}, 523, ReasonCleartext},
		{"source route other", "neg-plain.eml", envelope{"", carol, []string{"@elsewhere.example:bob@elsewhere.example"}}, 523, ReasonCleartext},
		{"address literal", "neg-plain.eml", envelope{"", carol, []string{"bob@[127.0.0.1]"}}, 523, ReasonCleartext},
		{"quoted local part", "neg-plain.eml", envelope{"", carol, []string{`"bob@chat.example"@elsewhere.example`}}, 523, ReasonCleartext},
		{"unparsable", "neg-plain.eml", envelope{"", carol, []string{"bob"}}, 523, ReasonCleartext},
		{"encrypted to literal", "enc-v4.eml", envelope{"", alice, []string{"bob@[127.0.0.1]"}}, 250, ReasonEncrypted},
		// Unauthenticated mail from a chatmail address gets the incoming rules.
		{"unauthenticated chatmail sender", "neg-plain.eml", envelope{"", alice, []string{"dave@elsewhere.example"}}, 523, ReasonCleartext},
		{"unauthenticated odd sender", "neg-plain.eml", envelope{"", "alice%chat.example@[127.0.0.1]", []string{"dave@elsewhere.example"}}, 553, ReasonBadSender},
		{"unauthenticated sender without @", "enc-v4.eml", envelope{"", "THIS_IS_READABLE_CLEARTEXT_IN_RETURN_PATH", []string{bob}}, 553, ReasonBadSender},
		{"unauthenticated sender with two @", "enc-v4.eml", envelope{"", "x@y@other.example", []string{bob}}, 553, ReasonBadSender},
		{"unauthenticated quoted sender", "enc-v4.eml", envelope{"", `"Meet me at the old mill at midnight"@evil.example`, []string{bob}}, 553, ReasonBadSender},

		{"other-domain user to other", "neg-plain.eml", envelope{carol, carol, []string{"dave@elsewhere.example"}}, 250, ReasonNotChatmail},
		{"other-domain user to chatmail", "neg-plain.eml", envelope{carol, carol, []string{bob}}, 523, ReasonCleartext},

		{"From forged", "enc-v4.eml", envelope{bob, bob, []string{carol}}, 554, ReasonBadFrom},
		{"envelope forged", "enc-v4.eml", envelope{bob, alice, []string{carol}}, 553, ReasonBadSender},
		{"domain case", "enc-v4.eml", envelope{"alice@Chat.Example", "alice@CHAT.example", []string{carol}}, 250, ReasonEncrypted},
		{"local part case", "enc-v4.eml", envelope{"Alice@chat.example", "Alice@chat.example", []string{carol}}, 250, ReasonEncrypted},
		{"local part case differs", "enc-v4.eml", envelope{"alice@chat.example", "ALICE@chat.example", []string{carol}}, 250, ReasonEncrypted},
	}
	e := testEngine(t, func(c *Config) { c.RateBurst = 1000 })
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := run(t, e, c.env, fixture(t, c.file))
			if v == nil || v.Reply.Code != c.code || v.Reason != c.why {
				t.Fatalf("got %+v, want %d %s", v, c.code, c.why)
			}
			if c.code == 523 && !strings.Contains(v.Reply.String(), "Invalid Unencrypted Mail") {
				t.Fatalf("reply %q", v.Reply)
			}
		})
	}
}

func TestStripHeaders(t *testing.T) {
	e := testEngine(t, nil)
	msg := "Received: from [203.0.113.9] (client [203.0.113.9])\r\n\tby mx with ESMTPSA\r\n" +
		"X-Mailer: Foo\r\nUser-Agent: Bar\r\nReceived: second\r\nX-Originating-IP: 203.0.113.9\r\n" +
		string(fixture(t, "enc-v4.eml"))
	// Both directions: none of these is on the allowlist.
	for _, env := range []envelope{{alice, alice, []string{carol}}, {"", carol, []string{bob}}} {
		v := run(t, e, env, []byte(msg))
		want := []HeaderChange{{"Received", 2, ""}, {"Received", 1, ""}, {"X-Mailer", 1, ""}, {"User-Agent", 1, ""}, {"X-Originating-IP", 1, ""}}
		if v.Reply.Code != 250 || !slices.Equal(v.Changes, want) {
			t.Fatalf("%+v: got %+v, want %+v", env, v.Changes, want)
		}
	}
}

func TestRecipientLimit(t *testing.T) {
	e := testEngine(t, func(c *Config) { c.MaxRecipients = 3 })
	txn := e.Begin(alice, alice)
	defer txn.Close()
	for i := range 5 {
		v := txn.Rcpt("r" + string(rune('a'+i)) + "@other.example")
		if (i < 3) != (v == nil) {
			t.Fatalf("rcpt %d: %+v", i, v)
		}
		if v != nil && (v.Reply.Code != 452 || v.Reason != ReasonTooManyRcpts) {
			t.Fatalf("rcpt %d: %+v", i, v)
		}
	}
	// Incoming mail is not capped here; Postfix has its own limit.
	txn = e.Begin("", carol)
	for range 5 {
		if v := txn.Rcpt(bob); v != nil {
			t.Fatalf("incoming capped: %+v", v)
		}
	}
}

func TestRateLimit(t *testing.T) {
	e := testEngine(t, func(c *Config) { c.RateBurst = 3; c.RatePerSecond = 1 })
	now := time.Unix(1000, 0)
	e.limiter.now = func() time.Time { return now }
	send := func() *Verdict {
		txn := e.Begin(alice, alice)
		defer txn.Close()
		v := txn.Rcpt(carol)
		if v != nil {
			// Every further recipient of the message gets the same answer.
			if w := txn.Rcpt(bob); w == nil || w.Reply != v.Reply {
				t.Fatalf("second rcpt: %+v", w)
			}
		}
		return v
	}
	for i := range 3 {
		if v := send(); v != nil {
			t.Fatalf("message %d limited: %+v", i, v)
		}
	}
	v := send()
	if v == nil || v.Reply.Code != 450 || v.Reply.Enhanced != "4.7.1" || !strings.Contains(v.Reply.Text, "Too much mail from "+alice) {
		t.Fatalf("got %+v", v)
	}
	now = now.Add(time.Second)
	if v := send(); v != nil {
		t.Fatalf("after refill: %+v", v)
	}
	// Other senders have their own bucket.
	if v := e.Begin(bob, bob).Rcpt(carol); v != nil {
		t.Fatalf("bob limited: %+v", v)
	}
	// Idle senders are forgotten.
	now = now.Add(time.Hour)
	e.limiter.Allow("someone@chat.example")
	if n := e.limiter.Len(); n != 1 {
		t.Fatalf("%d senders tracked", n)
	}
}

// dkimFixture signs a fixture as domain with a fresh key and returns the
// message and the key record.
func dkimFixture(t *testing.T, name, domain string) ([]byte, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var signed bytes.Buffer
	opts := &dkim.SignOptions{Domain: domain, Selector: "s1", Signer: priv,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}
	if err := dkim.Sign(&signed, bytes.NewReader(fixture(t, name)), opts); err != nil {
		t.Fatal(err)
	}
	return signed.Bytes(), "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
}

func TestDKIMVerify(t *testing.T) {
	signed, record := dkimFixture(t, "enc-v4.eml", "chat.example")
	sub, subRecord := dkimFixture(t, "enc-v4.eml", "sub.other.example")
	e := testEngine(t, nil)
	e.SetLookup(dkimstream.Map{
		"s1._domainkey.chat.example":      record,
		"s1._domainkey.sub.other.example": subRecord,
	})
	in := envelope{"", alice, []string{bob}}
	tampered := bytes.Replace(signed, []byte("Subject: [...]"), []byte("Subject: [..!]"), 1)
	fromOther := bytes.Replace(signed, []byte("From: <alice@chat.example>"), []byte("From: <alice@sub.chat.example>"), 1)
	cases := []struct {
		name string
		msg  []byte
		code int
		why  Reason
	}{
		{"valid", signed, 250, ReasonEncrypted},
		{"unsigned", fixture(t, "enc-v4.eml"), 554, ReasonDKIMUnsigned},
		{"tampered", tampered, 554, ReasonDKIMInvalid},
		{"parent domain aligns", fromOther, 554, ReasonDKIMInvalid}, // From is signed, so changing it breaks the signature
		{"unaligned", sub, 554, ReasonDKIMUnaligned},
		{"cleartext first", fixture(t, "neg-plain.eml"), 523, ReasonCleartext},
		// An address literal cannot be DKIM-aligned: no longer a way around it.
		{"literal From", bytes.Replace(fixture(t, "enc-v4.eml"), []byte("From: <alice@chat.example>"), []byte("From: <mailer-daemon@[192.0.2.1]>"), 1), 554, ReasonBadFrom},
		{"literal From signed", bytes.Replace(signed, []byte("From: <alice@chat.example>"), []byte("From: <alice@[192.0.2.1]>"), 1), 554, ReasonBadFrom},
		// Text posing as an address: quoted local part, endless subdomain.
		{"quoted From", bytes.Replace(signed, []byte("From: <alice@chat.example>"), []byte(`From: "Meet me at the old mill at midnight"@chat.example`), 1), 554, ReasonBadFrom},
		{"long From domain", bytes.Replace(signed, []byte("From: <alice@chat.example>"), []byte("From: <x@"+strings.Repeat("meet.me.at.the.old.mill.", 11)+"chat.example>"), 1), 554, ReasonBadFrom},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := run(t, e, in, c.msg)
			if v.Reply.Code != c.code || v.Reason != c.why {
				t.Fatalf("got %+v, want %d %s", v, c.code, c.why)
			}
		})
	}
	// A key lookup that fails temporarily defers the message.
	e.SetLookup(tempFail{})
	if v := run(t, e, in, signed); v.Reply.Code != 451 || v.Reason != ReasonDKIMTempFail {
		t.Fatalf("tempfail: %+v", v)
	}
}

type tempFail struct{}

func (tempFail) LookupTXT(context.Context, string) ([]string, error) {
	return nil, &timeoutErr{}
}

type timeoutErr struct{}

func (*timeoutErr) Error() string   { return "timeout" }
func (*timeoutErr) Timeout() bool   { return true }
func (*timeoutErr) Temporary() bool { return true }

func TestAligned(t *testing.T) {
	for _, c := range []struct {
		d, from string
		ok      bool
	}{
		{"chat.example", "chat.example", true},
		{"Chat.Example.", "chat.example", true},
		{"chat.example", "sub.chat.example", true},
		{"sub.chat.example", "chat.example", false},
		{"example", "chat.example", false},
		{"hat.example", "chat.example", false},
	} {
		if got := dkimstream.Aligned(c.d, c.from); got != c.ok {
			t.Errorf("Aligned(%q, %q) = %v", c.d, c.from, got)
		}
	}
}

func TestDKIMSign(t *testing.T) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "dkim.key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	e := testEngine(t, func(c *Config) { c.DKIMSelector, c.DKIMKeyFile = "sel", keyFile })
	msg := "Received: from [203.0.113.9]\r\nUser-Agent: Foo\r\n" + string(fixture(t, "enc-v6.eml"))
	v := run(t, e, envelope{alice, alice, []string{carol}}, []byte(msg))
	if v.Reply.Code != 250 || len(v.Add) != 1 || v.Add[0].Name != "DKIM-Signature" {
		t.Fatalf("got %+v", v)
	}
	// Build the message as Postfix would deliver it and verify it.
	final := "DKIM-Signature: " + v.Add[0].Value + "\r\n" + string(fixture(t, "enc-v6.eml"))
	verifs, err := dkim.VerifyWithOptions(strings.NewReader(final), &dkim.VerifyOptions{
		LookupTXT: func(string) ([]string, error) {
			return []string{"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)}, nil
		},
	})
	if err != nil || len(verifs) != 1 || verifs[0].Err != nil || verifs[0].Domain != "chat.example" {
		t.Fatalf("verify: %v %+v", err, verifs)
	}
}

func TestConfigValidate(t *testing.T) {
	text := `[mail]
domains = ["chat.example"]
[milter]
rate_burst = 5
[milter.dkim_domains."chat.example"]
selector = "s"
key_file = "/nonexistent"
`
	cfg := Defaults()
	if _, err := config.Parse(text, "milter", &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.RateBurst != 5 || cfg.DKIMDomains["chat.example"].Selector != "s" || cfg.MaxRecipients != 50 {
		t.Fatalf("%+v", cfg)
	}
	for _, bad := range []string{
		`rate_per_second = 0.0`,
		`max_recipients = 0`,
		`dkim_selector = "s"`,
		`no_such_key = 1`,
	} {
		cfg := Defaults()
		if _, err := config.Parse("[mail]\ndomains=[\"a.example\"]\n[milter]\n"+bad+"\n", "milter", &cfg); !config.IsError(err) {
			t.Errorf("%s: got %v", bad, err)
		}
	}
	// A key file that cannot be read is a config error at engine start.
	common := config.Defaults()
	common.Mail.Domains = []string{"chat.example"}
	if _, err := NewEngine(&common, &cfg, slog.New(slog.DiscardHandler)); !config.IsError(err) {
		t.Fatalf("missing key: %v", err)
	}
}

func TestToCRLF(t *testing.T) {
	var prev bool
	var out []byte
	for _, p := range []string{"a\nb\r", "\nc\r\n", "\n"} {
		out = toCRLF(out, []byte(p), &prev)
	}
	if string(out) != "a\r\nb\r\nc\r\n\r\n" {
		t.Fatalf("%q", out)
	}
	_ = io.Discard
}

func TestSecureJoinHeaderCap(t *testing.T) {
	e := testEngine(t, nil)
	out := envelope{alice, alice, []string{carol}}
	msg := fixture(t, "securejoin-vc.eml")
	big := append([]byte("X-Pad: "+strings.Repeat("x", 70)+strings.Repeat("\r\n\t"+strings.Repeat("x", 70), maxSecureJoinHeader/72)+"\r\n"), msg...)
	if v := run(t, e, out, big); v.Reply.Code != 523 {
		t.Fatalf("big header: %+v", v)
	}
	if v := run(t, e, out, msg); v.Reply.Code != 250 {
		t.Fatalf("normal header: %+v", v)
	}
}

// TestHeaderNameSpace checks that "Content-Type :" is not taken for
// another field than Content-Type: the MTA and a MIME parser might see a
// second Content-Type in it, so the message is refused.
func TestHeaderNameSpace(t *testing.T) {
	e := testEngine(t, nil)
	txn := e.Begin("", alice)
	defer txn.Close()
	if v := txn.Rcpt(bob); v != nil {
		t.Fatal(v)
	}
	msg := fixture(t, "enc-v4.eml")
	v, err := Replay(context.Background(), txn, bytes.NewReader(append([]byte("Content-Type : text/plain\r\n"), msg...)))
	if err != nil {
		t.Fatal(err)
	}
	if v.Reply.Accepted() || v.Reason != ReasonBadHeader {
		t.Fatalf("got %+v", v)
	}
}

// TestDKIMNotStarted checks that a verification that was never started is
// an internal error, not a crash.
func TestDKIMNotStarted(t *testing.T) {
	e := testEngine(t, nil)
	txn := e.Begin("", carol)
	defer txn.Close()
	txn.dkimCount, txn.from = 1, carol
	if v := txn.checkDKIM(context.Background()); v == nil || v.Reason != ReasonInternal {
		t.Fatalf("got %+v", v)
	}
}

// TestSimpleCanonicalization checks incoming DKIM with simple header
// canonicalization on fields written without a space, or with a tab,
// after the colon.
func TestSimpleCanonicalization(t *testing.T) {
	for _, variant := range []string{"Subject: [...]", "Subject:[...]", "Subject:\t[...]", "Subject:  [...]"} {
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		msg := bytes.Replace(fixture(t, "enc-v4.eml"), []byte("Subject: [...]"), []byte(variant), 1)
		msg = bytes.Replace(msg, []byte("From: <alice@chat.example>"), []byte("From:<carol@other.example>"), 1)
		var signed bytes.Buffer
		opts := &dkim.SignOptions{Domain: "other.example", Selector: "s1", Signer: priv,
			HeaderCanonicalization: dkim.CanonicalizationSimple, BodyCanonicalization: dkim.CanonicalizationSimple}
		if err := dkim.Sign(&signed, bytes.NewReader(msg), opts); err != nil {
			t.Fatal(err)
		}
		e := testEngine(t, nil)
		e.SetLookup(dkimstream.Map{"s1._domainkey.other.example": "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)})
		if v := run(t, e, envelope{"", carol, []string{bob}}, signed.Bytes()); v.Reply.Code != 250 {
			t.Errorf("%q: %+v", variant, v)
		}
	}
}
