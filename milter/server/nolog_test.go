package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	stdlog "log"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-milter"

	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/mailpolicy"
)

// panicLookup is a DKIM key lookup with a bug: it panics with a value
// that quotes a sender and a resolver, as a careless panic would.
type panicLookup struct{}

func (panicLookup) LookupTXT(_ context.Context, name string) ([]string, error) {
	panic(fmt.Errorf("no key at %s for <mallory@forged.example> from resolver 192.0.2.53", name))
}

// TestNoLogNamesNoOne drives the milter through refusals (a forged
// envelope sender, a forged From, cleartext in and out), a DKIM check
// whose lookup panics and a protocol error go-milter logs itself, and
// checks the log: under No-Log no address, IP, Message-ID or queue id;
// with No-Log off the refused user is named.
func TestNoLogNamesNoOne(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			log, _, out := logtest.New(on)
			logging.RouteStdLog(log)
			t.Cleanup(func() { stdlog.SetOutput(os.Stderr); stdlog.SetFlags(stdlog.LstdFlags) })
			h := startLogged(t, log, func(c *Config) { c.VerifyDKIM = true },
				func(e *mailpolicy.Engine) { e.SetLookup(panicLookup{}) })

			s := h.session(t)
			defer s.Close()
			// Outgoing, envelope sender not the login: refused at RCPT.
			if act := begin(t, s, "alice@chat.example", "mallory@chat.example", "carol@other.example"); act == nil || act.SMTPCode/100 != 5 {
				t.Fatalf("forged envelope sender: %+v", act)
			}
			if err := s.Abort(); err != nil {
				t.Fatal(err)
			}
			// Outgoing, From not the login.
			begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example")
			forged := bytes.Replace(fixture(t, "enc-v6.eml"), []byte("From: <alice@chat.example>"), []byte("From: <mallory@chat.example>"), 1)
			if _, act := message(t, s, forged); act.Code != milter.ActReplyCode || act.SMTPCode != 554 {
				t.Fatalf("forged From: %+v", act)
			}
			// Outgoing cleartext.
			begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example")
			if _, act := message(t, s, fixture(t, "neg-plain.eml")); act.SMTPCode != 523 {
				t.Fatalf("cleartext: %+v", act)
			}
			// Incoming, From forged, signed: the key lookup panics, the
			// message gets a temporary failure.
			s2 := h.session(t)
			defer s2.Close()
			begin(t, s2, "", "carol@other.example", "bob@chat.example")
			signed := bytes.Replace(fixture(t, "enc-v4.eml"), []byte("From: <alice@chat.example>\r\n"),
				[]byte("From: <mallory@forged.example>\r\nDKIM-Signature: v=1; a=rsa-sha256; d=forged.example; s=sel; c=relaxed/relaxed; h=from; bh=AAAA; b=AAAA\r\n"), 1)
			if !bytes.Contains(signed, []byte("DKIM-Signature")) {
				t.Fatal("the fixture's From line changed")
			}
			if _, act := message(t, s2, signed); act.Code != milter.ActReplyCode || act.SMTPCode != 451 {
				t.Fatalf("signed incoming with a panicking key lookup: %+v, want 451", act)
			}
			// Incoming cleartext.
			begin(t, s2, "", "carol@other.example", "bob@chat.example")
			if _, act := message(t, s2, fixture(t, "neg-plain.eml")); act.SMTPCode != 523 {
				t.Fatalf("incoming cleartext: %+v", act)
			}
			// RCPT before MAIL: go-milter logs the error and ends the session.
			c := negotiateRaw(t, h.sock)
			rawPacket(t, c, 'R', "<bob@chat.example>")
			if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(c); err != nil { // go-milter logs, then closes
				t.Fatal(err)
			}
			c.Close()

			text := out.String()
			for _, want := range []string{"panic while serving a connection", "Error performing milter command: RCPT before MAIL"} {
				if !strings.Contains(text, want) {
					t.Errorf("the log lacks %q:\n%s", want, text)
				}
			}
			if !on {
				if !strings.Contains(text, "refused sender") || !strings.Contains(text, "mallory@chat.example") {
					t.Errorf("with No-Log off the log does not name the refused sender:\n%s", text)
				}
				return
			}
			if leaks := logtest.Leaks(text, "alice@chat.example", "mallory@chat.example", "carol@other.example", "bob@chat.example",
				"mallory@forged.example", "fixture-multipar@localhost", "fixture-textpla@localhost", "4Fq1x2", "192.0.2.53", "203.0.113.9"); len(leaks) > 0 {
				t.Errorf("under No-Log the log names %q:\n%s", leaks, text)
			}
			if bad := logtest.Shapes(text); len(bad) > 0 {
				t.Errorf("under No-Log the log holds the shape of an identity:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}
