package integration

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"chatmail.dev/integration/stack"
)

// fixture returns one of the milter's message fixtures with its placeholder
// addresses replaced: alice@chat.example sends, bob@chat.example receives.
func fixture(t *testing.T, name, from, to string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(stack.Repo(), "sidecar", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer("alice@chat.example", from, "bob@chat.example", to).Replace(string(b))
}

// submit sends msg through the submission port as an authenticated user.
func submit(s *stack.Stack, from, pass, to, msg string) error {
	c, err := smtp.DialStartTLS(s.Addr("SUBMISSION_PORT"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", from, pass)); err != nil {
		return err
	}
	return smtpSend(c, from, to, msg)
}

// deliverMX sends msg to the MX port, unauthenticated, as another server would.
func deliverMX(s *stack.Stack, from, to, msg string) error {
	c, err := smtp.Dial(s.Addr("SMTP_PORT"))
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("mx.elsewhere.test"); err != nil {
		return err
	}
	return smtpSend(c, from, to, msg)
}

func smtpSend(c *smtp.Client, from, to, msg string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n"))); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func smtpCode(err error) (int, string) {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se.Code, se.Message
	}
	return 0, fmt.Sprint(err)
}

// newUsers creates n accounts by logging them in.
func newUsers(t *testing.T, s *stack.Stack, n int) []string {
	t.Helper()
	var users []string
	for range n {
		u := newAddr(s)
		wantLogin(t, s, u, goodPassword, "")
		users = append(users, u)
	}
	return users
}

func maildirCount(s *stack.Stack, user string) int {
	files, _ := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], user, "new", "*"))
	return len(files)
}

func TestMilterSubmission(t *testing.T) {
	s := shared
	u := newUsers(t, s, 2)
	alice, bob := u[0], u[1]

	for _, name := range []string{"neg-plain.eml", "securejoin-fake.eml", "neg-literal.eml", "neg-version-only.eml"} {
		err := submit(s, alice, goodPassword, bob, fixture(t, name, alice, bob))
		if code, text := smtpCode(err); code != 523 || !contains(text, "Invalid Unencrypted Mail") {
			t.Errorf("%s at submission: %v, want 523 with \"Invalid Unencrypted Mail\"", name, err)
		}
	}
	if n := maildirCount(s, bob); n != 0 {
		t.Fatalf("rejected mail reached the recipient (%d files)", n)
	}

	accepted := []string{"enc-v4.eml", "enc-v6.eml", "enc-skesk-v6.eml", "securejoin-vc.eml"}
	for _, name := range accepted {
		// Headers that describe the sender's device must not travel.
		msg := "User-Agent: LeakyClient/1.0\nX-Mailer: LeakyClient\nX-Originating-IP: [192.0.2.7]\n" + fixture(t, name, alice, bob)
		if err := submit(s, alice, goodPassword, bob, msg); err != nil {
			t.Errorf("%s at submission: %v, want accepted", name, err)
		}
	}
	eventually(t, 15*time.Second, func() error {
		if n := maildirCount(s, bob); n != len(accepted) {
			return fmt.Errorf("recipient's Maildir holds %d messages, want %d", n, len(accepted))
		}
		return nil
	})
	files, _ := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], bob, "new", "*"))
	signed := 0
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if contains(string(b), "DKIM-Signature:") {
			signed++
		}
		if contains(string(b), "LeakyClient") || contains(string(b), "192.0.2.7") || contains(string(b), "127.0.0.1") {
			t.Errorf("%s still names the sender's client", f)
		}
	}
	if signed != len(files) {
		t.Errorf("%d of %d delivered messages carry our DKIM signature", signed, len(files))
	}

	// From header must be the authenticated user.
	mallory := strings.Replace(fixture(t, "enc-v6.eml", alice, bob), "From: <"+alice+">", "From: <"+bob+">", 1)
	if code, _ := smtpCode(submit(s, alice, goodPassword, bob, mallory)); code/100 != 5 {
		t.Errorf("forged From header: code %d, want 5xx", code)
	}
}

func TestMilterMX(t *testing.T) {
	s := shared
	bob := newUsers(t, s, 1)[0]
	from := "carol@elsewhere.test"
	if code, text := smtpCode(deliverMX(s, from, bob, fixture(t, "neg-plain.eml", from, bob))); code != 523 {
		t.Errorf("cleartext at MX: %d %s, want 523", code, text)
	}
	if code, text := smtpCode(deliverMX(s, from, bob, fixture(t, "enc-v6.eml", from, bob))); code != 554 || !contains(text, "DKIM") {
		t.Errorf("unsigned encrypted mail at MX: %d %s, want 554 naming DKIM", code, text)
	}
	if n := maildirCount(s, bob); n != 0 {
		t.Errorf("rejected MX mail reached the recipient (%d files)", n)
	}

	// Signed by the sending domain, with both canonicalizations: accepted.
	copyFile(t, filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey."+s.Domain), filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey.elsewhere.test"))
	for _, c := range []dkim.Canonicalization{dkim.CanonicalizationSimple, dkim.CanonicalizationRelaxed} {
		// Written without the space after the colon, as some mailers do:
		// simple canonicalization signs these exact bytes.
		raw := strings.Replace(fixture(t, "enc-v6.eml", from, bob), "Subject: [...]", "Subject:[...]", 1)
		msg := dkimSign(t, s, raw, "elsewhere.test", c)
		if err := deliverMX(s, from, bob, msg); err != nil {
			t.Errorf("DKIM-signed (%s) encrypted mail at MX: %v, want accepted", c, err)
		}
		// Cleartext is refused even when properly signed.
		msg = dkimSign(t, s, fixture(t, "neg-plain.eml", from, bob), "elsewhere.test", c)
		if code, text := smtpCode(deliverMX(s, from, bob, msg)); code != 523 {
			t.Errorf("signed cleartext at MX: %d %s, want 523", code, text)
		}
	}
	eventually(t, 15*time.Second, func() error {
		if n := maildirCount(s, bob); n != 2 {
			return fmt.Errorf("recipient holds %d messages, want 2", n)
		}
		return nil
	})
}

// dkimSign signs msg for domain with the stack's own DKIM key, as another
// server with that key would.
func dkimSign(t *testing.T, s *stack.Stack, msg, domain string, c dkim.Canonicalization) string {
	t.Helper()
	pemBytes, err := os.ReadFile(filepath.Join(s.Dir, "etc", "dkim.key"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(pemBytes)
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	crlf := strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	var out bytes.Buffer
	err = dkim.Sign(&out, strings.NewReader(crlf), &dkim.SignOptions{Domain: domain, Selector: "chatmail", Signer: key.(crypto.Signer),
		HeaderCanonicalization: c, BodyCanonicalization: c})
	if err != nil {
		t.Fatal(err)
	}
	return out.String()
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMilterRateLimit(t *testing.T) {
	s := shared
	u := newUsers(t, s, 2)
	alice, bob := u[0], u[1]
	msg := fixture(t, "enc-v6.eml", alice, bob)
	limited := 0
	for i := range 15 {
		err := submit(s, alice, goodPassword, bob, msg)
		if err == nil {
			continue
		}
		code, text := smtpCode(err)
		if code != 450 || !contains(text, "4.7.1") && !contains(text, "Too much mail") {
			t.Fatalf("message %d: %v, want accepted or 450 4.7.1", i, err)
		}
		limited++
	}
	if limited == 0 {
		t.Error("15 messages in a row were all accepted; want 450 after the burst of 10")
	}
}
