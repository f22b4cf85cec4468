package mailpolicy

import (
	"bytes"
	"os"
	"regexp"
	"strings"
	"testing"

	"chatmail.dev/sidecar/bounce"
	"chatmail.dev/sidecar/mimescan"
	"chatmail.dev/sidecar/pgpmime"
)

// maxHeaderFields is a header section with every field of the allowlist
// filled to what the header policy keeps, and more: the most readable
// text a header can carry after the policy.
func maxHeaderFields(from, boundary string) string {
	local := func(i int) string { return strings.Repeat(string(rune('a'+i%26)), maxLocalPart) }
	domain := strings.Repeat(strings.Repeat("d", 62)+".", 4)[:maxDomain-4] + ".org"
	var to []string
	for i := range 200 {
		if len(strings.Join(to, ", "))+maxLocalPart+maxDomain+6 > MaxAddressList {
			break
		}
		to = append(to, "<"+local(i)+"@"+domain+">")
	}
	id := func(c string) string { return "<" + strings.Repeat(c, mimescan.MaxMsgID-len("<@x.org>")) + "@x.org>" }
	var refs []string
	for i := range MaxReferences {
		refs = append(refs, id(string(rune('a'+i))))
	}
	tok := strings.Repeat("T", MaxToken)
	return "From: <" + from + ">\r\n" +
		"To: " + strings.Join(to, ", ") + "\r\n" +
		"Cc: " + strings.Join(to, ", ") + "\r\n" +
		"Date: Thu, 26 Nov 2026 12:01:03 +0000\r\n" +
		"Message-ID: " + id("m") + "\r\n" +
		"In-Reply-To: " + id("i") + "\r\n" +
		"References: " + strings.Join(refs, " ") + "\r\n" +
		"Subject: [...]\r\nMIME-Version: 1.0\r\nChat-Version: 1.0\r\nChat-Is-Post-Message: 1\r\n" +
		"Auto-Submitted: auto-replied\r\n" +
		"Secure-Join-Invitenumber: " + tok + "\r\nSecure-Join-Auth: " + tok + "\r\n" +
		"Secure-Join-Group: " + tok + "\r\nSecure-Join-Fingerprint: " + tok + "\r\n" +
		"Content-Transfer-Encoding: 7bit\r\n"
}

// TestReadableBudget builds, for every shape the policy accepts, the
// message with the most readable text it lets through, and checks that
// what is stored stays within the budget the README states.
func TestReadableBudget(t *testing.T) {
	e := testEngine(t, nil)
	from := strings.Repeat("f", maxLocalPart) + "@chat.example"
	boundary := strings.Repeat("B", mimescan.MaxBoundary)
	edge := strings.Repeat("p", pgpmime.MaxPreamble-2) + "\r\n"

	enc := fixture(t, "enc-v4.eml")
	_, encBody, _ := bytes.Cut(enc, []byte("\r\n\r\n"))
	armor := encBody[bytes.Index(encBody, []byte("-----BEGIN PGP MESSAGE-----")):]
	armor = armor[:bytes.Index(armor, []byte("-----END PGP MESSAGE-----"))+len("-----END PGP MESSAGE-----\r\n")]
	armor = bytes.Replace(armor, []byte("-----\r\n\r\n"), []byte("-----\r\nVersion: "+strings.Repeat("v", pgpmime.MaxArmorHeaderValue)+"\r\n\r\n"), 1)
	name := strings.Repeat("n", 32)
	partHeader := func(ct string) string {
		return "Content-Type: " + ct + "; charset=" + strings.Repeat("c", 16) + "; name=" + name + "\r\n" +
			"Content-Transfer-Encoding: 7bit\r\nContent-Description: PGP/MIME versions identification\r\n" +
			"Content-Disposition: attachment; filename=" + name + "\r\n\r\n"
	}
	encrypted := maxHeaderFields(from, boundary) +
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"" + boundary + "\"\r\n\r\n" +
		edge + "--" + boundary + "\r\n" + partHeader("application/pgp-encrypted") + "Version: 1\r\n" +
		"--" + boundary + "\r\n" + partHeader("application/octet-stream") + string(armor) +
		"--" + boundary + "--\r\n" + edge

	secureJoin := maxHeaderFields(from, boundary) + "Secure-Join: vc-request\r\n" +
		"Content-Type: multipart/mixed; boundary=\"" + boundary + "\"\r\n\r\n" +
		"--" + boundary + "\r\nContent-Type: text/plain; charset=" + strings.Repeat("c", 16) + "\r\n" +
		"Message-ID: <" + strings.Repeat("s", mimescan.MaxMsgID-len("<@x.org>")) + "@x.org>\r\n" +
		"Content-Transfer-Encoding: 7bit\r\n\r\nSecure-Join: vc-request\r\n--" + boundary + "--\r\n"

	report, err := os.ReadFile("../testdata/bounces/ok-postfix-lmtp-unknown-and-quota.eml")
	if err != nil {
		t.Fatal(err)
	}
	_, reportBody, _ := bytes.Cut(bytes.ReplaceAll(report, []byte("\r\n"), []byte("\n")), []byte("\n\n"))
	reportCT := "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"99DCB9854C3.1795956406/nine.testrun.example\"\r\n"
	bounceFrom := "MAILER-DAEMON@chat.example"

	for _, c := range []struct {
		name   string
		env    envelope
		msg    string
		budget int
		why    Reason
	}{
		{"encrypted", envelope{"", from, []string{bob}}, encrypted, EncryptedBudget, ReasonEncrypted},
		// Outgoing, the armor has no Version header.
		{"encrypted outgoing", envelope{from, from, []string{carol}}, regexp.MustCompile(`Version: v+\r\n`).ReplaceAllString(encrypted, ""), EncryptedBudget, ReasonEncrypted},
		{"secure-join", envelope{"", from, []string{bob}}, secureJoin, SecureJoinBudget, ReasonSecureJoin},
		{"bounce", envelope{"", "", []string{bob}}, maxHeaderFields(bounceFrom, "") + reportCT + "\r\n" + string(reportBody), BounceBudget, ReasonBounce},
	} {
		msg := []byte(strings.ReplaceAll(strings.ReplaceAll(c.msg, "\r\n", "\n"), "\n", "\r\n"))
		v := run(t, e, c.env, msg)
		if !v.Reply.Accepted() || v.Reason != c.why {
			t.Fatalf("%s: got %+v", c.name, v)
		}
		n := Readable(applyChanges(t, msg, v))
		t.Logf("%s: %d readable bytes, budget %d", c.name, n, c.budget)
		if n > c.budget {
			t.Errorf("%s: %d readable bytes, over the budget of %d", c.name, n, c.budget)
		}
	}
	// A bounce is not generated at its largest: its budget is the sum of
	// its parts' limits, each tested in package bounce.
	if BounceBudget < EncryptedBudget+bounce.MaxReadable {
		t.Errorf("BounceBudget %d does not cover the header, the report and a returned message", BounceBudget)
	}
}
