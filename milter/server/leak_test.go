package server

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDroppedSessions checks that an MTA connection closed in the middle
// of a message (no SMFIC_ABORT, which go-milter would need) ends the DKIM
// verification and signing goroutines of the message.
func TestDroppedSessions(t *testing.T) {
	keys := t.TempDir()
	if err := os.WriteFile(filepath.Join(keys, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	h := start(t, func(c *Config) { c.VerifyDKIM = true; c.DKIMKeysDir = keys })
	runtime.GC()
	base := runtime.NumGoroutine()
	for range 50 {
		c := negotiateRaw(t, h.sock)
		// No replies but to RCPT and the end of the message (see protocol).
		rawPacket(t, c, 'M', "<x@other.example>")
		rawPacket(t, c, 'R', "<bob@chat.example>")
		readCode(t, c)
		rawPacket(t, c, 'L', "From", " <x@other.example>")
		rawPacket(t, c, 'L', "DKIM-Signature", " v=1; a=rsa-sha256; d=other.example; s=sel; c=relaxed/relaxed; h=from; bh=AAAA; b=AAAA")
		rawPacket(t, c, 'L', "Content-Type", ` multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"`)
		rawPacket(t, c, 'N')
		rawData(t, c, 'B', []byte("--B\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"))
		// Past what a verification holds: it streams to its goroutine.
		rawData(t, c, 'B', bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n"), 1100))
		c.Close() // the MTA goes away without SMFIC_ABORT
	}
	deadline := time.Now().Add(5 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		runtime.GC()
		if n = runtime.NumGoroutine(); n <= base {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<16)
	t.Fatalf("goroutines: %d before, %d after 50 dropped sessions\n%s", base, n, buf[:runtime.Stack(buf, true)])
}

// TestRcptRefusalThenAccept checks that a refused recipient is counted on
// its own and the message, accepted for the other recipients, gets its
// verdict counted too.
func TestRcptRefusalThenAccept(t *testing.T) {
	h := start(t, func(c *Config) { c.MaxRecipients = 1 })
	s := h.session(t)
	defer s.Close()
	if act := begin(t, s, "alice@chat.example", "alice@chat.example", "carol@other.example"); act != nil {
		t.Fatalf("first RCPT: %+v", act)
	}
	act, err := s.Rcpt("<dave@other.example>", nil)
	if err != nil || act.SMTPCode != 452 {
		t.Fatalf("second RCPT: %+v %v", act, err)
	}
	if _, act := message(t, s, fixture(t, "enc-v4.eml")); act.Code != milter.ActAccept {
		t.Fatalf("message: %+v", act)
	}
	if got := testutil.ToFloat64(h.m.RcptRefusals.WithLabelValues("too_many_recipients")); got != 1 {
		t.Errorf("rcpt refusals = %v", got)
	}
	if got := testutil.ToFloat64(h.m.Verdicts.WithLabelValues("out", "encrypted")); got != 1 {
		t.Errorf("verdicts{out,encrypted} = %v", got)
	}
}

// TestRepliesOnlyWhereAwaited checks, on the wire, that the milter answers
// RCPT and the end of the message and nothing else, with a decision taken
// at the end of the header section and with a failure at MAIL.
func TestRepliesOnlyWhereAwaited(t *testing.T) {
	h := start(t, nil)
	c := negotiateRaw(t, h.sock)
	rawPacket(t, c, 'D', "M{auth_authen}", "alice@chat.example")
	rawPacket(t, c, 'M', "<alice@chat.example>")
	expectSilence(t, c, "MAIL")
	rawPacket(t, c, 'R', "<carol@other.example>")
	if code := readCode(t, c); code != 'c' {
		t.Fatalf("RCPT answered %q", code)
	}
	// From is not the login: decided with the header, answered at the end.
	rawPacket(t, c, 'L', "From", " <mallory@chat.example>")
	rawPacket(t, c, 'N')
	expectSilence(t, c, "the header section")
	rawData(t, c, 'B', []byte("hello\r\n"))
	expectSilence(t, c, "a body chunk")
	rawPacket(t, c, 'E')
	if code := readCode(t, c); code != 'y' {
		t.Fatalf("end of message answered %q, want a reply code", code)
	}
	expectSilence(t, c, "the answer to the message")

	// A failure at MAIL (no engine) is answered at RCPT, and only there.
	c = negotiateRaw(t, startBroken(t, h.m).sock)
	rawPacket(t, c, 'M', "<carol@other.example>")
	expectSilence(t, c, "a failed MAIL")
	for range 2 {
		rawPacket(t, c, 'R', "<bob@chat.example>")
		if code := readCode(t, c); code != 'y' {
			t.Fatalf("RCPT after a failed MAIL answered %q, want a reply code (451)", code)
		}
	}
	expectSilence(t, c, "the RCPT answers")
}
