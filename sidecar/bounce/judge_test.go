package bounce

import (
	"bytes"
	"encoding/base64"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"chatmail.dev/sidecar/internal/testmsg"
	"chatmail.dev/sidecar/pgpmime"
)

const fixtureDir = "../testdata/bounces"

// splitMessage splits a raw message into its top-level header values and body.
func splitMessage(t testing.TB, raw []byte) (ct, cte []string, body []byte) {
	return testmsg.Split(t, raw)
}

// judgeSplit judges body written in chunks of the sizes next returns.
func judgeSplit(j *Judge, ct, cte []string, body []byte, next func(rest int) int) error {
	j.Reset(ct, cte)
	for len(body) > 0 {
		n := min(next(len(body)), len(body))
		if w, err := j.Write(body[:n]); w != n || err != nil {
			panic("Write failed")
		}
		body = body[n:]
	}
	return j.Close()
}

func whole(rest int) int   { return rest }
func oneByte(rest int) int { return 1 }
func random(rnd *rand.Rand) func(int) int {
	return func(rest int) int {
		if rnd.IntN(4) == 0 {
			return 64 << 10
		}
		return 1 + rnd.IntN(min(rest, 300))
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

var fixtureWant = map[string]error{
	// Postfix 3.7.11, captured; its LMTP client talked to a stand-in that
	// answered as Dovecot does for an unknown user and a full mailbox.
	"ok-postfix-lmtp-unknown-and-quota.eml": nil,
	"ok-postfix-headers-only.eml":           nil,
	"ok-postfix-delayed.eml":                nil,
	"ok-postfix-smtputf8.eml":               nil,
	"ok-chatmail-relay-unknown-user.eml":    nil,
	// Reconstructed from the MTAs' formats.
	"ok-exim.eml":             nil,
	"ok-exim-dsn-info.eml":    nil,
	"ok-sendmail.eml":         nil,
	"ok-outlook-com.eml":      nil,
	"ok-quoted-printable.eml": nil,

	"neg-gmail.eml":                        ErrTextPart,
	"neg-microsoft365.eml":                 ErrTextPart,
	"neg-relay-upstream-mailer-daemon.eml": ErrReturnedHeader,
	"neg-html-part.eml":                    ErrTextPart,
	"neg-base64-text.eml":                  ErrTextPart,
	"neg-long-text.eml":                    ErrTextSize,
	"neg-image-part.eml":                   ErrReturnedPart,
	"neg-fourth-part.eml":                  ErrPartCount,
	"neg-cleartext-returned.eml":           ErrReturnedBody,
	"neg-prose-status.eml":                 ErrStatusFields,
	"neg-status-repeated.eml":              ErrStatusFields,
	"neg-status-code.eml":                  ErrStatusFields,
	"neg-status-no-recipient.eml":          ErrStatusFields,
	"neg-status-unknown-field.eml":         ErrStatusFields,
	"neg-disposition-notification.eml":     ErrReportType,
	"neg-delimiter-prefix.eml":             ErrDelimiter,
	"neg-preamble-boundary.eml":            ErrDelimiter,
	"neg-rfc2231-boundary.eml":             ErrContentType,
	"neg-dash-part-header.eml":             ErrPartHeader,
	"neg-part-header-field.eml":            ErrPartHeader,
	"neg-long-preamble.eml":                ErrPreamble,
	"neg-unterminated.eml":                 ErrUnterminated,
	"neg-bare-cr.eml":                      ErrLine,
	"neg-headers-with-body.eml":            ErrReturnedHeader,
}

func TestFixtures(t *testing.T) {
	files, err := filepath.Glob(fixtureDir + "/*.eml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	seen := map[string]bool{}
	rnd := rand.New(rand.NewPCG(1, 2))
	j := NewJudge()
	for _, f := range files {
		name := filepath.Base(f)
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			want, ok := fixtureWant[name]
			if !ok {
				t.Fatal("fixture has no expectation in fixtureWant")
			}
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			ct, cte, body := splitMessage(t, raw)
			got := judgeSplit(j, ct, cte, body, whole)
			if want == nil && got != nil || !errors.Is(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
			for _, split := range []func(int) int{oneByte, random(rnd), random(rnd), random(rnd)} {
				if g := judgeSplit(j, ct, cte, body, split); errString(g) != errString(got) {
					t.Fatalf("chunked: %v, whole: %v", g, got)
				}
			}
			// LF line endings judge the same.
			lf := bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n"))
			if g := judgeSplit(j, ct, cte, lf, whole); errString(g) != errString(got) && want != ErrLine {
				t.Fatalf("LF: %v, CRLF: %v", g, got)
			}
		})
	}
	for name := range fixtureWant {
		if !seen[name] {
			t.Errorf("fixture %s missing", name)
		}
	}
}

// The returned message must be encrypted; the reason pgpmime gives is kept.
func TestReturnedReason(t *testing.T) {
	raw, err := os.ReadFile(fixtureDir + "/neg-cleartext-returned.eml")
	if err != nil {
		t.Fatal(err)
	}
	ct, cte, body := splitMessage(t, raw)
	got := judgeSplit(NewJudge(), ct, cte, body, whole)
	if !errors.Is(got, ErrReturnedBody) || !errors.Is(got, pgpmime.ErrNotEncryptedType) {
		t.Fatalf("got %v", got)
	}
}

// postfixBounce returns the top-level Content-Type and a body of the shape
// Postfix writes, with the given part bodies; an empty returned leaves the
// third part out.
func postfixBounce(text, status, returnedType, returned string) ([]string, []byte) {
	var b strings.Builder
	b.WriteString("This is a MIME-encapsulated message.\r\n\r\n--B\r\n")
	b.WriteString("Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	b.WriteString(text)
	b.WriteString("\r\n--B\r\nContent-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n\r\n")
	b.WriteString(status)
	if returned != "" {
		b.WriteString("\r\n--B\r\nContent-Description: Undelivered Message\r\nContent-Type: " + returnedType + "\r\n\r\n")
		b.WriteString(returned)
	}
	b.WriteString("\r\n--B--\r\n")
	return []string{`multipart/report; report-type=delivery-status; boundary="B"`}, []byte(b.String())
}

const (
	okText   = "This is the mail system at host chat.example.\r\n\r\n<bob@chat.example>: mailbox full\r\n"
	okStatus = "Reporting-MTA: dns; chat.example\r\nX-Postfix-Queue-ID: 4ABC\r\n\r\n" +
		"Final-Recipient: rfc822; bob@chat.example\r\nAction: failed\r\nStatus: 5.2.2\r\n" +
		"Diagnostic-Code: smtp; 552 5.2.2 Quota exceeded\r\n"
	okHeaders = "From: <alice@chat.example>\r\nTo: <bob@chat.example>\r\nSubject: [...]\r\n" +
		"Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\tboundary=\"ENCRYPTED\"\r\n"
)

func TestRules(t *testing.T) {
	ctOK, _ := postfixBounce(okText, okStatus, "", "")
	cases := []struct {
		name      string
		ct, cte   []string
		text      string
		status    string
		rtype, rv string
		want      error
	}{
		{name: "two parts", want: nil},
		{name: "headers only", rtype: "text/rfc822-headers", rv: okHeaders, want: nil},
		{name: "headers trailing blank lines", rtype: "text/rfc822-headers", rv: okHeaders + "\r\n\r\n", want: nil},
		{name: "headers empty", rtype: "text/rfc822-headers", rv: "\r\n", want: ErrReturnedHeader},
		{name: "headers no colon", rtype: "text/rfc822-headers", rv: "Buy cheap watches\r\n", want: ErrReturnedHeader},
		{name: "headers leading continuation", rtype: "text/rfc822-headers", rv: " x\r\nFrom: a\r\n", want: ErrReturnedHeader},
		{name: "headers too long", rtype: "text/rfc822-headers", rv: strings.Repeat("X-A: "+strings.Repeat("a", 90)+"\r\n", MaxReturnedHeader/97+1), want: ErrReturnedHeader},
		{name: "headers dash name", rtype: "text/rfc822-headers", rv: "-From: a\r\n", want: ErrReturnedHeader},
		{name: "headers fields after blank line", rtype: "text/rfc822-headers", rv: okHeaders + "\r\nX-Spam: buy watches\r\n", want: ErrReturnedHeader},
		{name: "headers control char", rtype: "text/rfc822-headers", rv: "From: a\x01b\r\n", want: ErrReturnedHeader},
		{name: "returned html", rtype: "text/html", rv: "<b>x</b>\r\n", want: ErrReturnedPart},
		{name: "returned multipart", rtype: "multipart/mixed; boundary=C", rv: "--C\r\n\r\nx\r\n--C--\r\n", want: ErrReturnedPart},
		{name: "returned rfc822 with params", rtype: "message/rfc822; x=y", rv: okHeaders + "\r\n", want: ErrReturnedPart},
		{name: "returned rfc822 headers only", rtype: "message/rfc822", rv: strings.TrimSuffix(okHeaders, "\r\n"), want: ErrReturnedHeader},
		{name: "returned rfc822 empty body", rtype: "message/rfc822", rv: okHeaders + "\r\n", want: ErrReturnedBody},
		{name: "top-level mixed", ct: []string{`multipart/mixed; boundary="B"`}, want: ErrReportType},
		{name: "top-level no report-type", ct: []string{`multipart/report; boundary="B"`}, want: ErrReportType},
		{name: "top-level extra param", ct: []string{`multipart/report; report-type=delivery-status; boundary="B"; charset=utf-8`}, want: ErrContentType},
		{name: "top-level repeated", ct: []string{ctOK[0], ctOK[0]}, want: ErrContentType},
		{name: "top-level none", ct: []string{}, want: ErrContentType},
		{name: "top-level duplicate param", ct: []string{`multipart/report; report-type=delivery-status; boundary="B"; boundary="C"`}, want: ErrContentType},
		{name: "top-level quoted semicolon", ct: []string{`multipart/report; report-type=delivery-status; boundary="B;x"`}, want: ErrContentType},
		{name: "top-level bad boundary", ct: []string{`multipart/report; report-type=delivery-status; boundary="B<"`}, want: ErrContentType},
		{name: "top-level base64", cte: []string{"base64"}, want: ErrTransferEncoding},
		{name: "top-level 8bit", cte: []string{"8bit"}, want: nil},
		{name: "top-level two encodings", cte: []string{"8bit", "7bit"}, want: ErrTransferEncoding},
		{name: "text at limit", text: strings.Repeat(strings.Repeat("a", 126)+"\r\n", MaxText/128), want: nil},
		{name: "text over limit", text: strings.Repeat(strings.Repeat("a", 126)+"\r\n", MaxText/128) + "a", want: ErrTextSize},
		{name: "text many lines", text: strings.Repeat("watches\r\n", 1000), want: ErrTextSize},
		{name: "status at limit", status: okStatus + "X-Pad: " + strings.Repeat("a", 900) + "\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("a", 900)+"\r\n", (MaxStatus-len(okStatus))/909-1), want: nil},
		{name: "status over limit", status: okStatus + strings.Repeat("X-Pad: "+strings.Repeat("a", 900)+"\r\n", (MaxStatus-len(okStatus))/909+1), want: ErrStatusFields},
		{name: "status leading blank", status: "\r\n" + okStatus, want: ErrStatusFields},
		{name: "status blank lines between", status: strings.Replace(okStatus, "\r\n\r\n", "\r\n\r\n\r\n\r\n", 1), want: nil},
		{name: "status whitespace line", status: strings.Replace(okStatus, "\r\n\r\n", "\r\n \r\n", 1), want: ErrStatusFields},
		{name: "status whitespace line at end", status: okStatus + " \r\n", want: ErrStatusFields},
		{name: "status folded", status: okStatus + "Remote-MTA: dns;\r\n mx.chat.example\r\n", want: nil},
		{name: "status folded too long", status: okStatus + "Diagnostic-Code: smtp; x\r\n" + strings.Repeat(" "+strings.Repeat("a", 200)+"\r\n", 5), want: ErrStatusFields},
		{name: "status no reporting-mta", status: strings.Replace(okStatus, "Reporting-MTA", "X-Reporting-MTA", 1), want: ErrStatusFields},
		{name: "status two reporting-mta", status: "Reporting-MTA: dns; a\r\n" + okStatus, want: ErrStatusFields},
		{name: "status no action", status: strings.Replace(okStatus, "Action: failed\r\n", "", 1), want: ErrStatusFields},
		{name: "status no final-recipient", status: strings.Replace(okStatus, "Final-Recipient", "Original-Recipient", 1), want: ErrStatusFields},
		{name: "status bad action", status: strings.Replace(okStatus, "Action: failed", "Action: buy watches", 1), want: ErrStatusFields},
		{name: "status action case", status: strings.Replace(okStatus, "Action: failed", "action: FAILED", 1), want: nil},
		{name: "status code comment", status: strings.Replace(okStatus, "Status: 5.2.2", "Status: 5.0.0 (permanent failure)", 1), want: nil},
		{name: "status code prose", status: strings.Replace(okStatus, "Status: 5.2.2", "Status: 5.0.0 buy watches", 1), want: ErrStatusFields},
		{name: "status code class 3", status: strings.Replace(okStatus, "Status: 5.2.2", "Status: 3.2.2", 1), want: ErrStatusFields},
		{name: "status code long subject", status: strings.Replace(okStatus, "Status: 5.2.2", "Status: 5.2222.2", 1), want: ErrStatusFields},
		{name: "status code 3 digits", status: strings.Replace(okStatus, "Status: 5.2.2", "Status: 5.123.456", 1), want: nil},
		{name: "status untyped recipient", status: strings.Replace(okStatus, "rfc822; bob", "bob", 1), want: ErrStatusFields},
		{name: "status empty typed text", status: strings.Replace(okStatus, "rfc822; bob@chat.example", "rfc822;", 1), want: ErrStatusFields},
		{name: "status bad type", status: strings.Replace(okStatus, "rfc822; bob", "rfc 822; bob", 1), want: ErrStatusFields},
		{name: "status empty value", status: okStatus + "Last-Attempt-Date:\r\n", want: ErrStatusFields},
		{name: "status recipient field per-message", status: "Final-Recipient: rfc822; a@b\r\n" + okStatus, want: ErrStatusFields},
		{name: "status per-message field per-recipient", status: okStatus + "Arrival-Date: today\r\n", want: ErrStatusFields},
		{name: "status unknown field", status: okStatus + "Subject: watches\r\n", want: ErrStatusFields},
		{name: "status dash field", status: okStatus + "-X: watches\r\n", want: ErrStatusFields},
		{name: "status two recipients", status: okStatus + "\r\n" + strings.SplitN(okStatus, "\r\n\r\n", 2)[1], want: nil},
		{name: "status second recipient incomplete", status: okStatus + "\r\nFinal-Recipient: rfc822; c@d\r\n", want: ErrStatusFields},
		{name: "status continuation first", status: " x\r\n" + okStatus, want: ErrStatusFields},
		{name: "status tab allowed", status: okStatus + "Diagnostic-Code: smtp;\tx\r\n", want: nil},
		{name: "status control char", status: okStatus + "Diagnostic-Code: smtp; \x1b[31m\r\n", want: ErrStatusFields},
		{name: "status remote-mta twice", status: okStatus + "Remote-MTA: dns; a\r\nRemote-MTA: X-ip; [192.0.2.1]\r\n", want: nil},
		{name: "status original-recipient twice", status: okStatus + "Original-Recipient: rfc822; a\r\nOriginal-Recipient: rfc822; b\r\n", want: ErrStatusFields},
	}
	j := NewJudge()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text, status := okText, okStatus
			if c.text != "" {
				text = c.text
			}
			if c.status != "" {
				status = c.status
			}
			ct, body := postfixBounce(text, status, c.rtype, c.rv)
			if c.ct != nil {
				ct = c.ct
			}
			got := judgeSplit(j, ct, c.cte, body, whole)
			if c.want == nil && got != nil || !errors.Is(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if g := judgeSplit(j, ct, c.cte, body, oneByte); errString(g) != errString(got) {
				t.Fatalf("byte by byte: %v, whole: %v", g, got)
			}
		})
	}
}

// TestStructure covers the MIME structure around the parts byte by byte.
func TestStructure(t *testing.T) {
	ct, base := postfixBounce(okText, okStatus, "text/rfc822-headers", okHeaders)
	cases := []struct {
		name     string
		old, new string
		want     error
	}{
		{"no preamble", "This is a MIME-encapsulated message.\r\n\r\n", "", nil},
		{"long preamble", "This is a MIME-encapsulated message.\r\n", strings.Repeat("x", MaxPreamble) + "\r\n", ErrPreamble},
		{"boundary in preamble", "This is a MIME-encapsulated message.\r\n", "see x--B\r\n", ErrDelimiter},
		{"transport padding", "\r\n--B\r\nContent-Description: Delivery", "\r\n--B \t\r\nContent-Description: Delivery", nil},
		{"delimiter prefix", "<bob@chat.example>", "--Bob@chat.example", ErrDelimiter},
		{"delimiter prefix in status", "X-Postfix-Queue-ID: 4ABC\r\n", "--B-X: 4ABC\r\n", ErrDelimiter},
		{"delimiter prefix in headers", "Subject: [...]\r\n", "--BSubject: [...]\r\n", ErrDelimiter},
		{"close delimiter text", "\r\n--B--\r\n", "\r\n--B--x\r\n", ErrDelimiter},
		{"epilogue", "\r\n--B--\r\n", "\r\n--B--\r\nThanks\r\n", nil},
		{"long epilogue", "\r\n--B--\r\n", "\r\n--B--\r\n" + strings.Repeat("x", MaxPreamble) + "\r\n", ErrPreamble},
		{"delimiter in epilogue", "\r\n--B--\r\n", "\r\n--B--\r\n--B\r\n", ErrPreamble},
		{"unterminated", "\r\n--B--\r\n", "\r\n", ErrUnterminated},
		{"part header unterminated", "Content-Type: message/delivery-status\r\n\r\n", "Content-Type: message/delivery-status\r\n--B--\r\n", ErrPartHeader},
		{"part header dash name", "Content-Description: Notification\r\n", "-Content-Description: Notification\r\n", ErrPartHeader},
		{"part header two types", "Content-Type: text/plain; charset=us-ascii\r\n", "Content-Type: text/plain; charset=us-ascii\r\nContent-Type: text/html\r\n", ErrPartHeader},
		{"part header two descriptions", "Content-Description: Notification\r\n", "Content-Description: Notification\r\nContent-Description: x\r\n", ErrPartHeader},
		{"part header unknown field", "Content-Description: Notification\r\n", "Content-ID: <x>\r\n", ErrPartHeader},
		{"part header too long", "Content-Description: Notification\r\n", "Content-Description: x\r\n" + strings.Repeat(" "+strings.Repeat("x", 98)+"\r\n", MaxPartHeader/100), ErrPartHeader},
		{"part header folded", "Content-Description: Notification\r\n", "Content-Description:\r\n Notification\r\n", nil},
		{"part header rfc2231", "charset=us-ascii", "charset*=us-ascii", ErrPartHeader},
		{"text no content-type", "Content-Description: Notification\r\nContent-Type: text/plain; charset=us-ascii\r\n", "", nil},
		{"status no content-type", "Content-Description: Delivery report\r\nContent-Type: message/delivery-status\r\n", "Content-Description: Delivery report\r\n", ErrPartHeader},
		{"text name param", "charset=us-ascii", "charset=us-ascii; name=x.txt", ErrTextPart},
		{"text flowed", "charset=us-ascii", "charset=us-ascii; format=flowed", nil},
		{"text qp", "charset=us-ascii\r\n", "charset=us-ascii\r\nContent-Transfer-Encoding: quoted-printable\r\n", nil},
		{"text binary", "charset=us-ascii\r\n", "charset=us-ascii\r\nContent-Transfer-Encoding: binary\r\n", ErrTextPart},
		{"text disposition", "charset=us-ascii\r\n", "charset=us-ascii\r\nContent-Disposition: inline\r\n", nil},
		{"status global", "Content-Type: message/delivery-status", "Content-Type: message/global-delivery-status", nil},
		{"status params", "Content-Type: message/delivery-status", "Content-Type: message/delivery-status; x=y", ErrStatusPart},
		{"status qp", "Content-Type: message/delivery-status\r\n", "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: quoted-printable\r\n", ErrStatusPart},
		{"status as text", "Content-Type: message/delivery-status", "Content-Type: text/plain", ErrStatusPart},
		{"headers global", "Content-Type: text/rfc822-headers", "Content-Type: message/global-headers", nil},
		{"headers charset", "Content-Type: text/rfc822-headers", "Content-Type: text/rfc822-headers; charset=us-ascii", nil},
		{"headers base64", "Content-Type: text/rfc822-headers\r\n", "Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: base64\r\n", ErrReturnedPart},
		{"bare CR", "<bob@chat.example>", "<bob@chat.example>\r--B", ErrLine},
		{"NUL", "<bob@chat.example>", "<bob@chat.example>\x00", ErrLine},
		{"long line", "<bob@chat.example>", strings.Repeat("x", MaxLine), ErrLine},
	}
	j := NewJudge()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !bytes.Contains(base, []byte(c.old)) {
				t.Fatalf("%q not in base", c.old)
			}
			body := bytes.Replace(base, []byte(c.old), []byte(c.new), 1)
			got := judgeSplit(j, ct, nil, body, whole)
			if c.want == nil && got != nil || !errors.Is(got, c.want) {
				t.Fatalf("got %v, want %v", got, c.want)
			}
			if g := judgeSplit(j, ct, nil, body, oneByte); errString(g) != errString(got) {
				t.Fatalf("byte by byte: %v, whole: %v", g, got)
			}
		})
	}
}

func TestOnePart(t *testing.T) {
	ct := []string{`multipart/report; report-type=delivery-status; boundary="B"`}
	body := []byte("--B\r\nContent-Type: text/plain\r\n\r\n" + okText + "\r\n--B--\r\n")
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrPartCount) {
		t.Fatalf("got %v", got)
	}
	body = []byte("--B--\r\n")
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrPartCount) {
		t.Fatalf("no parts: got %v", got)
	}
}

// TestTotal checks MaxTotal: each part within its own limit, the sum over.
func TestTotal(t *testing.T) {
	hdr := strings.Repeat("X-A: "+strings.Repeat("a", 90)+"\r\n", MaxReturnedHeader/97)
	text := strings.Repeat("a", 70) + "\r\n"
	text = strings.Repeat(text, MaxText/len(text))
	status := okStatus + strings.Repeat("X-Pad: "+strings.Repeat("a", 900)+"\r\n", (MaxStatus-len(okStatus))/909)
	ct, body := postfixBounce(text, status, "text/rfc822-headers", hdr)
	body = append(body, strings.Repeat("x", MaxPreamble-2)+"\r\n"...) // epilogue
	if len(body) <= MaxTotal {
		t.Fatalf("body of %d bytes does not exceed MaxTotal", len(body))
	}
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrTooLarge) {
		t.Fatalf("got %v", got)
	}
	ct, body = postfixBounce(okText, okStatus, "text/rfc822-headers", hdr)
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); got != nil {
		t.Fatalf("got %v", got)
	}
}

// encrypted returns a PGP/MIME message (header and body) of about size
// bytes.
func encrypted(size int) string {
	return okHeaders + string(testmsg.EncryptedBody(size))
}

func TestReturnedEncrypted(t *testing.T) {
	for _, size := range []int{100, 4 << 10, 1 << 20} {
		ct, body := postfixBounce(okText, okStatus, "message/rfc822", encrypted(size))
		if got := judgeSplit(NewJudge(), ct, nil, body, whole); got != nil {
			t.Fatalf("%d: %v", size, got)
		}
	}
	// The returned message's own header section is bounded and must parse.
	ct, body := postfixBounce(okText, okStatus, "message/rfc822",
		strings.Repeat("X-A: "+strings.Repeat("a", 90)+"\r\n", MaxReturnedHeader/97+1)+encrypted(100))
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrReturnedHeader) {
		t.Fatalf("long header: %v", got)
	}
	ct, body = postfixBounce(okText, okStatus, "message/rfc822", "Buy cheap watches\r\n"+encrypted(100))
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrReturnedHeader) {
		t.Fatalf("bad header: %v", got)
	}
	// Two Content-Type fields in the returned message: pgpmime refuses.
	ct, body = postfixBounce(okText, okStatus, "message/rfc822", "Content-Type: text/plain\r\n"+encrypted(100))
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrReturnedBody) || !errors.Is(got, pgpmime.ErrContentType) {
		t.Fatalf("two content types: %v", got)
	}
	// The outer dash-boundary inside the returned message.
	ct, body = postfixBounce(okText, okStatus, "message/rfc822", strings.Replace(encrypted(100), "Version: 1", "Version: 1\r\n--B-", 1))
	if got := judgeSplit(NewJudge(), ct, nil, body, whole); !errors.Is(got, ErrDelimiter) {
		t.Fatalf("outer boundary inside: %v", got)
	}
}

// The issue's case: a bounce-shaped message with a megabyte of cleartext
// and images.
func TestIssue8(t *testing.T) {
	img := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, 1<<18))
	var lines strings.Builder
	for len(img) > 76 {
		lines.WriteString(img[:76] + "\r\n")
		img = img[76:]
	}
	for _, c := range []struct {
		name      string
		text      string
		rtype, rv string
		want      error
	}{
		{"1 MB text", strings.Repeat("Buy cheap watches at https://watches.example/ today!\r\n", 20000), "", "", ErrTextSize},
		{"image part", okText, "image/png", lines.String(), ErrReturnedPart},
		{"image in returned message", okText, "message/rfc822", "Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n" + lines.String(), ErrReturnedBody},
	} {
		ct, body := postfixBounce(c.text, okStatus, c.rtype, c.rv)
		if got := judgeSplit(NewJudge(), ct, nil, body, random(rand.New(rand.NewPCG(5, 6)))); !errors.Is(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestReset(t *testing.T) {
	j := NewJudge()
	if err := j.Close(); !errors.Is(err, ErrContentType) {
		t.Fatalf("new judge: %v", err)
	}
	ct, body := postfixBounce(okText, okStatus, "message/rfc822", encrypted(1000))
	bad := bytes.Replace(body, []byte("Status: 5.2.2"), []byte("Status: 9"), 1)
	for range 3 {
		if err := judgeSplit(j, ct, nil, bad, whole); !errors.Is(err, ErrStatusFields) {
			t.Fatalf("bad: %v", err)
		}
		if err := judgeSplit(j, ct, nil, body, whole); err != nil {
			t.Fatalf("good after bad: %v", err)
		}
		if j.Size() != int64(len(body)) {
			t.Fatalf("size %d, want %d", j.Size(), len(body))
		}
	}
}

// hostile returns 16 MiB bodies that try to make the judge hold data.
func hostile() map[string][]byte {
	const size = 16 << 20
	ct, good := postfixBounce(okText, okStatus, "message/rfc822", encrypted(size))
	_ = ct
	fill := func(prefix, line string) []byte {
		var b bytes.Buffer
		b.WriteString(prefix)
		for b.Len() < size {
			b.WriteString(line)
		}
		return b.Bytes()
	}
	_, pre := postfixBounce(okText, okStatus, "", "")
	textStart := string(pre[:bytes.Index(pre, []byte(okText))])
	statusStart := string(pre[:bytes.Index(pre, []byte(okStatus))])
	_, hdrs := postfixBounce(okText, okStatus, "text/rfc822-headers", okHeaders)
	hdrStart := string(hdrs[:bytes.Index(hdrs, []byte(okHeaders))])
	return map[string][]byte{
		"encrypted returned": good,
		"no newline":         bytes.Repeat([]byte("x"), size),
		"preamble":           fill("", "x\r\n"),
		"text":               fill(textStart, "Buy cheap watches!\r\n"),
		"status":             fill(statusStart, "X-A: b\r\n"),
		"status folded":      fill(statusStart+"Diagnostic-Code: smtp; x\r\n", " a\r\n"),
		"headers":            fill(hdrStart, "X-A: b\r\n"),
		"headers folded":     fill(hdrStart+"X-A: b\r\n", " a\r\n"),
	}
}

// judgeMilter judges body in milter-sized chunks (at most 64 KiB each).
func judgeMilter(j *Judge, ct []string, body []byte) error {
	return judgeSplit(j, ct, nil, body, func(int) int { return 64 << 10 })
}

// Memory must stay bounded whatever the body: judging 16 MiB allocates no
// more than a judge's fixed buffers.
func TestBoundedMemory(t *testing.T) {
	ct, _ := postfixBounce(okText, okStatus, "", "")
	for name, body := range hostile() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		err := judgeMilter(NewJudge(), ct, body)
		runtime.ReadMemStats(&after)
		t.Logf("%s: %d bytes allocated, verdict %v", name, after.TotalAlloc-before.TotalAlloc, err)
		if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
			t.Errorf("%s: judging 16 MiB allocated %d bytes (verdict %v)", name, n, err)
		}
		if name == "encrypted returned" && err != nil {
			t.Errorf("%s: %v", name, err)
		}
		j := NewJudge()
		small := testing.AllocsPerRun(2, func() { judgeMilter(j, ct, body[:4<<10]) })
		large := testing.AllocsPerRun(2, func() { judgeMilter(j, ct, body) })
		t.Logf("%s: %.0f allocations on 4 KiB, %.0f on 16 MiB", name, small, large)
		if large > small+2 {
			t.Errorf("%s: a reused judge made %.0f allocations on 16 MiB, %.0f on 4 KiB", name, large, small)
		}
	}
}
