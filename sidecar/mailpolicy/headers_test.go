package mailpolicy

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// applyChanges is Apply for tests; it also checks that the MTA, making
// the verdict's changes by name and index, arrives at the same message.
func applyChanges(t testing.TB, msg []byte, v *Verdict) []byte {
	t.Helper()
	out, err := Apply(msg, v)
	if err != nil {
		t.Fatal(err)
	}
	byMTA, err := applyAsMTA(msg, v)
	if err != nil {
		t.Fatalf("the MTA cannot make the changes: %v", err)
	}
	if !bytes.Equal(out, byMTA) {
		t.Fatalf("the policy delivers\n%s\nthe MTA would make\n%s", out, byMTA)
	}
	return out
}

// spammyHeader is a header section full of readable text in every place an
// encrypted message offered it before the header policy.
func spammyHeader(from string) string {
	spam := "Buy cheap watches at spam.example! "
	long := strings.Repeat(spam, 200) // 7 KB
	return "From: \"" + spam + "\" <" + from + ">\r\n" +
		"To: \"" + spam + "\" <bob@chat.example>, =?utf-8?q?Buy_cheap_watches?= <carol@other.example>\r\n" +
		"Cc: Spam group: <dave@other.example>;\r\n" +
		"Subject: " + long + "\r\n" +
		"Date: Thu, 26 Nov 2026 12:01:03 +0000 (" + spam + ")\r\n" +
		"Message-ID: <fixture-multipar@localhost>\r\n" +
		"In-Reply-To: <" + strings.Repeat("buy.cheap.watches", 10) + "@spam.example>\r\n" +
		"References: " + strings.Repeat("<a@b> ", 20) + "\r\n" +
		"X-Spam: " + long + "\r\n" +
		"Comments: " + spam + "\r\n" +
		"Keywords: " + spam + "\r\n" +
		"Reply-To: <" + from + ">\r\n" +
		"Chat-Version: 1.0 " + spam + "\r\n" +
		"Chat-Group-Name: " + spam + "\r\n" +
		"Secure-Join: " + spam + "\r\n" +
		"Secure-Join-Invitenumber: " + spam + "\r\n" +
		"Autocrypt: addr=" + from + "; keydata=" + strings.Repeat("QnV5IGNoZWFw", 10) + "\r\n" +
		"MIME-Version: 1.0 (" + spam + ")\r\n"
}

// TestHeaderPolicy checks that readable text in the header of an
// encrypted message is removed in both directions, and that what Delta
// Chat writes is left alone.
func TestHeaderPolicy(t *testing.T) {
	e := testEngine(t, nil)
	enc := fixture(t, "enc-v4.eml")
	_, encBody, _ := bytes.Cut(enc, []byte("\r\n\r\n"))
	ct := "Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"AsXr7bq0ZVm2Lw9c\"; " +
		"note=\"Buy cheap watches at spam.example\"\r\n"
	for _, env := range []envelope{{alice, alice, []string{carol}}, {"", carol, []string{bob}}} {
		from := env.from
		msg := []byte(spammyHeader(from) + ct + "\r\n" + string(encBody))
		v := run(t, e, env, msg)
		if !v.Reply.Accepted() || v.Reason != ReasonEncrypted {
			t.Fatalf("%+v: got %+v", env, v)
		}
		out := applyChanges(t, msg, v)
		head, _, _ := bytes.Cut(out, []byte("\n\n"))
		head = append(head, '\n')
		if bytes.Contains(bytes.ToLower(head), []byte("cheap")) || bytes.Contains(head, []byte("Buy")) {
			t.Fatalf("%+v: readable text left:\n%s", env, head)
		}
		for _, want := range []string{"From: <" + from + ">", "Subject: [...]", "To: <bob@chat.example>, <carol@other.example>",
			"Cc: <dave@other.example>", "Date: Thu, 26 Nov 2026 12:01:03 +0000", "Message-ID: <fixture-multipar@localhost>",
			"Chat-Version: 1.0", "MIME-Version: 1.0",
			`Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="AsXr7bq0ZVm2Lw9c"`} {
			if !bytes.Contains(head, []byte(want+"\n")) {
				t.Errorf("%+v: no %q in\n%s", env, want, head)
			}
		}
		for _, gone := range []string{"In-Reply-To", "References", "X-Spam", "Reply-To", "Autocrypt", "Secure-Join", "Comments"} {
			if bytes.Contains(head, []byte(gone+":")) {
				t.Errorf("%+v: %s kept", env, gone)
			}
		}
	}
	// A Delta Chat message is left as it is.
	for _, name := range []string{"enc-dc-2.62-text.eml", "enc-dc-2.62-text2.eml"} {
		if v := run(t, e, envelope{"", alice, []string{bob}}, fixture(t, name)); !v.Reply.Accepted() || len(v.Changes) != 0 {
			t.Errorf("%s: %+v", name, v)
		}
	}
}

// TestSenderFields checks that outgoing Sender, Reply-To and Resent-From
// name the authenticated user or refuse the message.
func TestSenderFields(t *testing.T) {
	e := testEngine(t, nil)
	enc := string(fixture(t, "enc-v4.eml"))
	for _, c := range []struct {
		field string
		ok    bool
	}{
		{"Sender: <alice@chat.example>", true},
		{"Reply-To: Alice <ALICE@chat.example>", true},
		{"Sender: <bob@chat.example>", false},
		{"Reply-To: <carol@other.example>", false},
		{"Reply-To: <alice@chat.example>, <carol@other.example>", false},
		{"Resent-From: <carol@other.example>", false},
		{"Resent-Sender: <carol@other.example>", false},
		{"Reply-To: not an address", false},
		{"Reply-To: =?utf-8?q?Alice_with_a_rather_long_display_name?=\r\n <alice@chat.example>", true},
	} {
		msg := []byte(c.field + "\r\n" + enc)
		v := run(t, e, envelope{alice, alice, []string{carol}}, msg)
		if v.Reply.Accepted() != c.ok {
			t.Errorf("%s: got %+v", c.field, v)
		}
		if c.ok && !bytes.Contains(applyChanges(t, msg, v), []byte("\n\n")) {
			t.Errorf("%s: broken message", c.field)
		}
		// Incoming, the same fields are just removed.
		if v := run(t, e, envelope{"", carol, []string{bob}}, []byte(c.field+"\r\n"+strings.Replace(enc, "alice@chat.example", "carol@other.example", 1))); !v.Reply.Accepted() {
			t.Errorf("incoming %s: got %+v", c.field, v)
		}
	}
}

// TestFoldedFrom checks that a From field folded by the client is read
// unfolded, in both directions.
func TestFoldedFrom(t *testing.T) {
	e := testEngine(t, nil)
	enc := string(fixture(t, "enc-v4.eml"))
	folded := "From: =?utf-8?q?Alice_Wonderland_with_a_pretty_long_display_name?=\r\n <alice@chat.example>"
	msg := []byte(strings.Replace(enc, "From: <alice@chat.example>", folded, 1))
	for _, env := range []envelope{{alice, alice, []string{carol}}, {"", alice, []string{bob}}} {
		v := run(t, e, env, msg)
		if !v.Reply.Accepted() || !bytes.HasPrefix(applyChanges(t, msg, v), []byte("From: <alice@chat.example>\n")) {
			t.Errorf("%+v: got %+v", env, v)
		}
	}
}

// TestAutocryptKey checks that an Autocrypt field is kept only with a key
// whose user IDs are "<addr>", and removed when a name rides along.
func TestAutocryptKey(t *testing.T) {
	e := testEngine(t, nil)
	enc := string(fixture(t, "enc-v4.eml"))
	key := func(name, addr string) string {
		ent, err := openpgp.NewEntity(name, "", addr, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := ent.Serialize(&b); err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b.Bytes())
	}
	for _, c := range []struct {
		name, keydata string
		kept          bool
	}{
		{"bare address", key("", alice), true},
		{"with a name", key("Buy cheap watches at spam.example", alice), false},
		{"other address", key("", bob), false},
		{"not a key", base64.StdEncoding.EncodeToString([]byte("Buy cheap watches")), false},
		// Packets go-crypto's reader skips: a private (tag 60) and a trust
		// (tag 12) packet holding text.
		{"private packet", withPacket(key("", alice), 0xc0|60, "Buy cheap watches at spam.example"), false},
		{"trust packet", withPacket(key("", alice), 0xc0|12, "Buy cheap watches at spam.example"), false},
		{"text notation", keyWithNotation(t, alice, "note@spam.example", "Buy cheap watches at spam.example"), false},
		{"relays notation", keyWithNotation(t, alice, "relays@chatmail.at", alice), true},
		{"relays notation with text", keyWithNotation(t, alice, "relays@chatmail.at", "Buy cheap watches at spam.example"), false},
	} {
		msg := []byte("Autocrypt: addr=" + alice + "; prefer-encrypt=mutual; keydata=" + c.keydata + "\r\n" + enc)
		v := run(t, e, envelope{"", alice, []string{bob}}, msg)
		kept := bytes.Contains(applyChanges(t, msg, v), []byte("Autocrypt:"))
		if !v.Reply.Accepted() || kept != c.kept {
			t.Errorf("%s: kept %v, want %v (%+v)", c.name, kept, c.kept, v)
		}
	}
}

// withPacket appends a new-format packet with the given header octet and
// body to a base64 key.
func withPacket(b64 string, hdr byte, body string) string {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		panic(err)
	}
	raw = append(append(raw, hdr, byte(len(body))), body...)
	return base64.StdEncoding.EncodeToString(raw)
}

// keyWithNotation returns a base64 key for addr whose self-signatures carry
// a human-readable notation.
func keyWithNotation(t *testing.T, addr, name, value string) string {
	t.Helper()
	cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA,
		SignatureNotations: []*packet.Notation{{Name: name, Value: []byte(value), IsHumanReadable: true}}}
	ent, err := openpgp.NewEntity("", "", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := ent.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(b.Bytes())
}
