package mailpolicy

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"chatmail.dev/sidecar/dkimstream"
)

// applyAsMTA makes v's changes on msg as Postfix makes a milter's
// (cleanup_milter.c): SMFIR_CHGHEADER edits the Index-th field of that
// name, names matched with strncasecmp (ASCII only), and an empty value
// deletes it; SMFIR_ADDHEADER appends. The header is split into fields as
// Replay splits it. Lines end in LF, as Apply writes them.
func applyAsMTA(msg []byte, v *Verdict) ([]byte, error) {
	var fields []*strings.Builder
	rest := msg
	for len(rest) > 0 {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		if (line[0] == ' ' || line[0] == '\t') && len(fields) > 0 {
			fields[len(fields)-1].WriteByte('\n')
			fields[len(fields)-1].Write(line)
			continue
		}
		var f strings.Builder
		f.Write(line)
		fields = append(fields, &f)
	}
	for _, c := range v.Changes {
		n := 0
		found := false
		for i, f := range fields {
			name, _, _ := strings.Cut(f.String(), ":")
			if !asciiEqualFold(name, c.Name) {
				continue
			}
			if n++; n != c.Index {
				continue
			}
			if c.Value == "" {
				fields = append(fields[:i], fields[i+1:]...)
			} else {
				var changed strings.Builder
				changed.WriteString(name + ": " + c.Value)
				fields[i] = &changed
			}
			found = true
			break
		}
		if !found {
			return nil, fmt.Errorf("change of %s[%d]: no such field", c.Name, c.Index)
		}
	}
	var b bytes.Buffer
	for _, f := range fields {
		b.WriteString(f.String() + "\n")
	}
	for _, f := range v.Add {
		b.WriteString(f.Name + ": " + f.Value + "\n")
	}
	b.WriteByte('\n')
	b.Write(bytes.ReplaceAll(body(msg), []byte("\r\n"), []byte("\n")))
	return b.Bytes(), nil
}

// TestApplyRefusedVerdict: Apply makes nothing of a verdict that is not a
// transaction's acceptance.
func TestApplyRefusedVerdict(t *testing.T) {
	e := testEngine(t, nil)
	msg := fixture(t, "neg-plain.eml")
	v := run(t, e, envelope{"", carol, []string{bob}}, msg)
	if v.Reply.Accepted() {
		t.Fatalf("cleartext accepted: %+v", v)
	}
	if _, err := Apply(msg, v); err == nil {
		t.Error("Apply took a refusal")
	}
	if _, err := Apply(msg, &Verdict{Reply: ReplyAccepted}); err == nil {
		t.Error("Apply took a verdict made up outside a transaction")
	}
}

// TestUnicodeFoldedFieldName: a field name outside RFC 5322 ftext refuses
// the message. Unicode case folding takes "ſubject" (U+017F) for
// "subject": such a field once made Apply rewrite or remove the wrong
// field, so that free text or the real cleartext Subject was delivered.
func TestUnicodeFoldedFieldName(t *testing.T) {
	e := testEngine(t, func(c *Config) { c.RateBurst = 1000 })
	enc := string(fixture(t, "enc-v4.eml"))
	for _, c := range []struct{ name, from, to string }{
		{"free text after Subject", "Subject: [...]\r\n", "Subject: [...]\r\n\u017fubject: THIS CLEARTEXT WOULD BE STORED\r\n"},
		{"decoy before a cleartext Subject", "Subject: [...]\r\n", "\u017fubject: decoy\r\nSubject: Cheap pills, visit spam.example\r\n"},
		{"decoy Message-ID", "Message-ID:", "Me\u017f\u017fage-ID: <decoy@evil.example>\r\nMessage-ID:"},
		{"Kelvin sign", "Subject: [...]\r\n", "Subject: [...]\r\nX-Mar\u212Aer: free text\r\n"},
		{"Latin-1 byte", "Subject: [...]\r\n", "Subject: [...]\r\nX-\xe9t\xe9: free text\r\n"},
		{"control character", "Subject: [...]\r\n", "Subject: [...]\r\nX-\x01: free text\r\n"},
		{"DEL", "Subject: [...]\r\n", "Subject: [...]\r\nX-\x7f: free text\r\n"},
		{"obsolete space before the colon", "Subject: [...]\r\n", "Subject : [...]\r\n"},
	} {
		msg := strings.Replace(enc, c.from, c.to, 1)
		if msg == enc {
			t.Fatalf("%s: fixture changed", c.name)
		}
		for _, env := range []envelope{{"", alice, []string{bob}}, {alice, alice, []string{carol}}} {
			v := run(t, e, env, []byte(msg))
			if v.Reply != ReplyBadHeader || v.Reason != ReasonBadHeader {
				t.Errorf("%s, %s: got %+v, want %s", c.name, env.dir(), v, ReplyBadHeader)
			}
		}
	}
	// The milter's path: the names as the MTA passes them.
	txn := e.Begin("", alice)
	defer txn.Close()
	if v := txn.Rcpt(bob); v != nil {
		t.Fatal(v)
	}
	txn.Header("From", " <"+alice+">")
	txn.Header("Subject", " [...]")
	txn.Header("\u017fubject", " free text")
	if v := txn.EndHeaders(); v == nil || v.Reply != ReplyBadHeader {
		t.Errorf("milter path: got %+v", v)
	}
}

func (env envelope) dir() string {
	if env.auth != "" {
		return "outgoing"
	}
	return "incoming"
}

// TestDuplicateFields: a message with two fields of an allowlisted name is
// refused, whatever their case; fields off the allowlist may repeat.
func TestDuplicateFields(t *testing.T) {
	e := testEngine(t, func(c *Config) { c.RateBurst = 1000 })
	enc := string(fixture(t, "enc-v4.eml"))
	for _, field := range []string{
		"To: <bob@chat.example>", "Cc: <bob@chat.example>", "Date: Mon, 01 Jan 2001 00:00:00 +0000",
		"Message-ID: <forged@evil.example>", "message-id: <forged@evil.example>",
		"In-Reply-To: <thread@victim.example>", "References: <thread@victim.example>", "Subject: [...]",
		"MIME-Version: 1.0", "Content-Transfer-Encoding: 7bit", "Chat-Version: 1.0", "Chat-Is-Post-Message: 1",
		"Auto-Submitted: auto-replied", "Secure-Join: vc-request", "Secure-Join-Invitenumber: abc",
		"Secure-Join-Auth: abc", "Secure-Join-Group: abc", "Secure-Join-Fingerprint: abc",
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"AsXr7bq0ZVm2Lw9c\"",
		"Autocrypt: addr=alice@chat.example; keydata=AAAA",
	} {
		// Twice, so that it is a duplicate also where the fixture has none.
		msg := []byte(field + "\r\n" + field + "\r\n" + enc)
		name, _, _ := strings.Cut(field, ":")
		for _, env := range []envelope{{"", alice, []string{bob}}, {alice, alice, []string{carol}}} {
			v := run(t, e, env, msg)
			if v.Reason != ReasonDuplicateField || v.Reply.Code != 554 || v.Reply.Enhanced != "5.6.0" ||
				!strings.Contains(strings.ToLower(v.Reply.Text), strings.ToLower(name)) {
				t.Errorf("%s twice, %s: got %+v", name, env.dir(), v)
			}
		}
	}
	// Two From fields keep their own answer.
	if v := run(t, e, envelope{"", alice, []string{bob}}, []byte("From: <"+alice+">\r\n"+enc)); v.Reply != ReplyBadFromIncoming {
		t.Errorf("two From: got %+v", v)
	}
	// Fields the policy removes may repeat (Received does).
	msg := []byte("Received: a\r\nReceived: b\r\nX-Other: 1\r\nx-other: 2\r\n" + enc)
	if v := run(t, e, envelope{"", alice, []string{bob}}, msg); !v.Reply.Accepted() {
		t.Errorf("repeated trace fields: got %+v", v)
	} else if out := applyChanges(t, msg, v); bytes.Contains(out, []byte("Received")) || bytes.Contains(bytes.ToLower(out), []byte("x-other")) {
		t.Errorf("fields off the allowlist kept:\n%s", out)
	}
}

// TestFieldFoldLimit: a field folded over more than maxFieldLines lines
// refuses the message, one at the limit passes; an Autocrypt key of
// MaxAutocryptKey bytes folded at 64 columns is well within it.
func TestFieldFoldLimit(t *testing.T) {
	e := testEngine(t, nil)
	enc := fixture(t, "enc-v4.eml")
	folded := func(lines int) []byte {
		return append([]byte("X-Junk: a"+strings.Repeat("\r\n x", lines-1)+"\r\n"), enc...)
	}
	if v := run(t, e, envelope{"", alice, []string{bob}}, folded(maxFieldLines)); !v.Reply.Accepted() {
		t.Errorf("%d lines: got %+v", maxFieldLines, v)
	}
	if v := run(t, e, envelope{"", alice, []string{bob}}, folded(maxFieldLines+1)); v.Reply != ReplyFoldedTooOften || v.Reason != ReasonHeaderSize {
		t.Errorf("%d lines: got %+v", maxFieldLines+1, v)
	}
	if lines := 1 + (MaxAutocryptKey*4/3)/64; lines*2 > maxFieldLines {
		t.Errorf("an Autocrypt key of MaxAutocryptKey takes %d lines, too close to maxFieldLines %d", lines, maxFieldLines)
	}
}

// TestFoldedFieldCostLinear: the bytes allocated for a field folded over
// many lines grow with the lines, not with their square, both where the
// message is refused (over maxFieldLines: Replay only) and where it is
// delivered (Replay and Apply).
func TestFoldedFieldCostLinear(t *testing.T) {
	e := testEngine(t, nil)
	enc := fixture(t, "enc-v4.eml")
	msg := func(lines int, line string) []byte {
		var b bytes.Buffer
		b.WriteString("X-Junk: a\r\n")
		for range lines {
			b.WriteString(" " + line + "\r\n")
		}
		b.Write(enc)
		return b.Bytes()
	}
	// allocated returns the least bytes allocated over a few runs of the
	// receiver's path on m, against noise from other goroutines.
	allocated := func(m []byte) uint64 {
		least := ^uint64(0)
		for range 3 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			txn := e.Begin("", alice)
			if v := txn.Rcpt(bob); v != nil {
				t.Fatal(v)
			}
			v, err := Replay(context.Background(), txn, bytes.NewReader(m))
			if err != nil {
				t.Fatal(err)
			}
			if v.Reply.Accepted() {
				if _, err := Apply(m, v); err != nil {
					t.Fatal(err)
				}
			}
			txn.Close()
			runtime.ReadMemStats(&after)
			least = min(least, after.TotalAlloc-before.TotalAlloc)
		}
		return least
	}
	for _, c := range []struct {
		name  string
		lines int
		line  string
	}{
		// 192 KiB at 4N lines, under maxHeader.
		{"refused", 16 << 10, "x"},
		// 60 KiB at 4N lines, under maxFieldLines.
		{"delivered", (maxFieldLines - 1) / 4, strings.Repeat("x", 75)},
	} {
		base := allocated(msg(0, ""))
		n := allocated(msg(c.lines, c.line))
		n4 := allocated(msg(4*c.lines, c.line))
		// Linear: about 4 times the bytes over the base (5 or 6 with the
		// steps a buffer grows by); quadratic: 16.
		ratio := float64(n4-min(base, n4)) / float64(max(n-min(base, n), 1))
		t.Logf("%s: %d bytes allocated with no fold, %d with %d lines, %d with %d: ratio %.1f", c.name, base, n, c.lines, n4, 4*c.lines, ratio)
		if ratio > 10 {
			t.Errorf("%s: 4 times the lines allocate %.1f times the bytes: not linear", c.name, ratio)
		}
	}
}

// TestDuplicateAboveSignature is the /mxdeliv receiver's path on a
// third party's DKIM-signed message with forged copies of signed fields
// put above the originals: DKIM verifies the last occurrence of a field,
// so it passes, and the header policy kept the first, so the forged
// values were delivered. Now the message is refused.
func TestDuplicateAboveSignature(t *testing.T) {
	signed, record := dkimFixture(t, "enc-v4.eml", "chat.example")
	e := testEngine(t, nil)
	e.SetLookup(dkimstream.Map{"s1._domainkey.chat.example": record})
	in := envelope{"", alice, []string{bob}}
	if v := run(t, e, in, signed); !v.Reply.Accepted() {
		t.Fatalf("the signed message: %+v", v)
	}
	for _, forged := range []string{
		"Message-ID: <forged-id@evil.example>\r\n",
		"To: <dave@chat.example>\r\n",
		"Date: Mon, 01 Jan 2001 00:00:00 +0000\r\n",
		"Subject: [...]\r\n",
	} {
		v := run(t, e, in, append([]byte(forged), signed...))
		if v.Reason != ReasonDuplicateField || v.Reply.Code != 554 {
			t.Errorf("%q above the signed fields: got %+v", forged, v)
		}
	}
}

// TestBouncesDeliveredAsBounces: every bounce of package bounce's fixtures
// is accepted, and what is delivered is still a bounce: the header policy
// keeps the Auto-Submitted field the bounce rule read (sendmail writes it
// with a comment, "auto-generated (failure)").
func TestBouncesDeliveredAsBounces(t *testing.T) {
	e := testEngine(t, nil)
	paths, err := filepath.Glob("../testdata/bounces/ok-*.eml")
	if err != nil || len(paths) < 5 {
		t.Fatalf("bounce fixtures: %v, %d found", err, len(paths))
	}
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if head, _, _ := bytes.Cut(raw, []byte("\r\n\r\n")); !bytes.Contains(bytes.ToLower(head), []byte("mailer-daemon@")) {
			continue // From postmaster@ (Outlook): refused, see the README there
		}
		env := envelope{"", "", []string{bob}}
		v := run(t, e, env, raw)
		if !v.Reply.Accepted() || v.Reason != ReasonBounce {
			t.Errorf("%s: got %+v", filepath.Base(p), v)
			continue
		}
		delivered := applyChanges(t, raw, v)
		if again := run(t, e, env, bytes.ReplaceAll(delivered, []byte("\n"), []byte("\r\n"))); again.Reason != ReasonBounce {
			t.Errorf("%s: delivered, then judged again: %+v", filepath.Base(p), again)
		}
	}
}
