package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"chatmail.dev/integration/stack"
)

// spam is the readable text an attacker tries to get into a mailbox.
const spam = "Buy cheap watches at spam.example"

// maildirFiles returns the contents of the messages in user's new/.
func maildirFiles(t *testing.T, s *stack.Stack, user string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], user, "new", "*"))
	var out []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, string(b))
	}
	return out
}

// noSpamStored waits for want messages in user's Maildir and fails if any
// holds the attacker's text.
func noSpamStored(t *testing.T, s *stack.Stack, user string, want int) {
	t.Helper()
	eventually(t, 15*time.Second, func() error {
		if n := maildirCount(s, user); n != want {
			return fmt.Errorf("%d messages stored, want %d", n, want)
		}
		return nil
	})
	for _, m := range maildirFiles(t, s, user) {
		if strings.Contains(strings.ToLower(m), "cheap watches") {
			t.Errorf("stored message carries readable text:\n%.2000s", m)
		}
	}
}

// withSpamHeader puts readable text in every header place an encrypted
// message offered before the header policy.
func withSpamHeader(msg, from string) string {
	long := strings.Repeat(spam+" ", 100)
	msg = strings.Replace(msg, "Subject: [...]", "Subject: "+long, 1)
	msg = strings.Replace(msg, "From: <"+from+">", "From: \""+spam+"\" <"+from+">", 1)
	msg = strings.Replace(msg, "protocol=\"application/pgp-encrypted\";", "protocol=\"application/pgp-encrypted\"; note=\""+spam+"\";", 1)
	return "X-Spam: " + long + "\nKeywords: " + spam + "\nComments: =?utf-8?q?" + strings.ReplaceAll(spam, " ", "_") + "?=\n" + msg
}

// TestPGPOnlyHeaders: an encrypted message whose header carries readable
// text is stored without it, submitted or from another server (hole 3).
func TestPGPOnlyHeaders(t *testing.T) {
	s := shared
	u := newUsers(t, s, 2)
	alice, bob := u[0], u[1]
	if err := submit(s, alice, goodPassword, bob, withSpamHeader(fixture(t, "enc-v6.eml", alice, bob), alice)); err != nil {
		t.Fatalf("submission: %v", err)
	}
	from := "carol@elsewhere.test"
	copyFile(t, filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey."+s.Domain), filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey.elsewhere.test"))
	msg := dkimSign(t, s, withSpamHeader(fixture(t, "enc-v4.eml", from, bob), from), "elsewhere.test", dkim.CanonicalizationRelaxed)
	if err := deliverMX(s, from, bob, msg); err != nil {
		t.Fatalf("MX: %v", err)
	}
	noSpamStored(t, s, bob, 2)
	for _, m := range maildirFiles(t, s, bob) {
		if !strings.Contains(strings.ReplaceAll(m, "\r\n", "\n"), "\nSubject: [...]\n") {
			t.Errorf("Subject not the placeholder:\n%.1500s", m)
		}
		// No trace line with the client's IP or its HELO name (text the
		// client chose) is stored.
		if strings.Contains(m, "mx.elsewhere.test") || strings.Contains(m, "127.0.0.1") {
			t.Errorf("stored message names the sending client:\n%.1500s", m)
		}
	}
}

// TestPGPOnlyForgedBounces: bounces that are not bounces, or whose sender
// cannot be verified, are refused (holes 1, 2, 4).
func TestPGPOnlyForgedBounces(t *testing.T) {
	s := shared
	bob := newUsers(t, s, 1)[0]
	text := strings.Repeat(spam+"\r\n", 30000) // 1 MB
	bounce := func(from string) string {
		return "From: Mail Delivery System <" + from + ">\r\nTo: <" + bob + ">\r\nSubject: " + spam + "\r\n" +
			"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\r\n\r\n" +
			"--b1\r\nContent-Type: text/plain\r\n\r\n" + text + "--b1\r\nContent-Type: text/html\r\n\r\n<p>" + spam + "</p>\r\n--b1--\r\n"
	}
	// 1: an address literal skipped DKIM, and the body was never read.
	if code, text := smtpCode(deliverMX(s, "", bob, bounce("MAILER-DAEMON@[192.0.2.1]"))); code/100 != 5 {
		t.Errorf("unsigned bounce from an address literal: %d %s, want refused", code, text)
	}
	// 2: signed by its own domain, but no delivery report.
	copyFile(t, filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey."+s.Domain), filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey.elsewhere.test"))
	signed := dkimSign(t, s, bounce("MAILER-DAEMON@elsewhere.test"), "elsewhere.test", dkim.CanonicalizationRelaxed)
	if code, text := smtpCode(deliverMX(s, "", bob, signed)); code != 523 {
		t.Errorf("DKIM-signed fake bounce: %d %s, want 523", code, text)
	}
	// 4: encrypted mail from an address literal needs DKIM like any other.
	from := "carol@[192.0.2.1]"
	if code, text := smtpCode(deliverMX(s, from, bob, fixture(t, "enc-v4.eml", from, bob))); code != 554 {
		t.Errorf("encrypted mail from an address literal: %d %s, want 554", code, text)
	}
	if n := maildirCount(s, bob); n != 0 {
		t.Errorf("%d refused messages were stored", n)
	}
	// A real bounce, signed by the reporting domain, still arrives.
	real := strings.ReplaceAll(fixtureFile(t, "bounces/ok-postfix-lmtp-unknown-and-quota.eml"), "\r\n", "\n")
	real = replaceHeader(real, "From", "Mail Delivery System <MAILER-DAEMON@elsewhere.test>")
	real = replaceHeader(real, "To", "<"+bob+">")
	if err := deliverMX(s, "", bob, dkimSign(t, s, real, "elsewhere.test", dkim.CanonicalizationRelaxed)); err != nil {
		t.Errorf("real bounce: %v", err)
	}
	eventually(t, 15*time.Second, func() error {
		if n := maildirCount(s, bob); n != 1 {
			return fmt.Errorf("%d messages stored, want the real bounce", n)
		}
		return nil
	})
}

// TestPGPOnlySecureJoin: a Secure-Join request carries nothing but the
// handshake (hole 5).
func TestPGPOnlySecureJoin(t *testing.T) {
	s := shared
	u := newUsers(t, s, 2)
	alice, bob := u[0], u[1]
	msg := fixture(t, "securejoin-vc.eml", alice, bob)
	msg = "X-Spam: " + strings.Repeat(spam+" ", 100) + "\n" + strings.Replace(msg, "Subject: ", "Subject: "+spam+" ", 1)
	if err := submit(s, alice, goodPassword, bob, msg); err != nil {
		t.Fatalf("Secure-Join request with extra header text: %v, want accepted without it", err)
	}
	// Text in a folded part parameter: not the shape Delta Chat sends.
	folded := strings.Replace(fixture(t, "securejoin-vc.eml", alice, bob), "Content-Type: text/plain; charset=\"utf-8\"",
		"Content-Type: text/plain; charset=\"utf-8\";\n\tx-note=\""+spam+"\"", 1)
	if folded == fixture(t, "securejoin-vc.eml", alice, bob) {
		t.Fatal("fixture changed: no part Content-Type to fold")
	}
	if code, text := smtpCode(submit(s, alice, goodPassword, bob, folded)); code != 523 {
		t.Errorf("Secure-Join request with text in a part parameter: %d %s, want 523", code, text)
	}
	noSpamStored(t, s, bob, 1)
}

func fixtureFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stack.Repo(), "sidecar", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// replaceHeader sets the value of the first field called name.
func replaceHeader(msg, name, value string) string {
	lines := strings.Split(msg, "\n")
	for i, l := range lines {
		if l == "" {
			break
		}
		if strings.HasPrefix(strings.ToLower(l), strings.ToLower(name)+":") {
			lines[i] = name + ": " + value
			break
		}
	}
	return strings.Join(lines, "\n")
}

// TestPGPOnlyLocalSendmail: a local user's sendmail goes through the milter
// too, so cleartext cannot reach a mailbox around it.
func TestPGPOnlyLocalSendmail(t *testing.T) {
	s := shared
	bob := newUsers(t, s, 1)[0]
	msg := "From: <root@localhost>\nTo: <" + bob + ">\nSubject: " + spam + "\n\n" + spam + "\n"
	cmd := s.Command("sendmail", "-C", s.Env["POSTFIX_CONFIG_DIR"], "-f", "root@localhost", bob)
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sendmail: %v: %s", err, out)
	}
	// The refusal shows in Postfix's log (chatmail-logd's output); then
	// nothing may have arrived.
	eventually(t, 15*time.Second, func() error {
		b, err := os.ReadFile(s.Env["LOGD_OUTPUT"])
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "milter-reject") || !strings.Contains(string(b), "Invalid Unencrypted Mail") {
			return fmt.Errorf("no milter refusal in the Postfix log yet")
		}
		return nil
	})
	if n := maildirCount(s, bob); n != 0 {
		t.Errorf("cleartext from sendmail was stored (%d files)", n)
	}
}
