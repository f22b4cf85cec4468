package server

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/mailpolicy"
)

// TestHeaderRefusals: the header policy's refusals reach the MTA on the
// milter's path as on /mxdeliv, at the end of the message (Postfix does
// not wait for an answer to the header section): a repeat of an
// allowlisted field (DKIM verifies the last, the policy kept the first),
// a field name outside RFC 5322 ftext ("ſubject", U+017F, is "subject"
// under Unicode case folding), a field folded over more than 1000 lines.
// Encrypted messages pass on the same connection before, between and
// after, both ways.
func TestHeaderRefusals(t *testing.T) {
	h := start(t, func(c *Config) { c.RateBurst = 100 })
	enc := fixture(t, "enc-v4.eml")
	edit := func(from, to string) []byte {
		t.Helper()
		out := bytes.Replace(enc, []byte(from), []byte(to), 1)
		if bytes.Equal(out, enc) {
			t.Fatalf("fixture changed: no %q", from)
		}
		return out
	}
	prepend := func(field string) []byte { return append([]byte(field), enc...) }
	folded := func(lines int) []byte { return prepend("X-Junk: a" + strings.Repeat("\r\n x", lines-1) + "\r\n") }
	dup := func(name string) *mailpolicy.Reply {
		return &mailpolicy.Reply{Code: 554, Enhanced: "5.6.0", Text: "Header field " + name + " must occur at most once"}
	}
	cases := []struct {
		name   string
		msg    []byte
		want   *mailpolicy.Reply // nil: accepted
		reason mailpolicy.Reason
	}{
		{"encrypted", enc, nil, mailpolicy.ReasonEncrypted},
		{"forged Message-ID above the original", prepend("Message-ID: <forged@evil.example>\r\n"), dup("Message-Id"), mailpolicy.ReasonDuplicateField},
		{"second subject, lower case", edit("Subject: [...]\r\n", "Subject: [...]\r\nsubject: [...]\r\n"), dup("Subject"), mailpolicy.ReasonDuplicateField},
		{"second To", prepend("To: <bob@chat.example>\r\n"), dup("To"), mailpolicy.ReasonDuplicateField},
		{"\u017fubject after Subject", edit("Subject: [...]\r\n", "Subject: [...]\r\n\u017fubject: THIS CLEARTEXT WOULD BE STORED\r\n"), &mailpolicy.ReplyBadHeader, mailpolicy.ReasonBadHeader},
		{"\u017fubject decoy before Subject", edit("Subject: [...]\r\n", "\u017fubject: decoy\r\nSubject: [...]\r\n"), &mailpolicy.ReplyBadHeader, mailpolicy.ReasonBadHeader},
		{"obsolete space before the colon", edit("Subject: [...]\r\n", "Subject : [...]\r\n"), &mailpolicy.ReplyBadHeader, mailpolicy.ReasonBadHeader},
		{"encrypted between", enc, nil, mailpolicy.ReasonEncrypted},
		{"folded over 1000 lines", folded(1000), nil, mailpolicy.ReasonEncrypted},
		{"folded over 1001 lines", folded(1001), &mailpolicy.ReplyFoldedTooOften, mailpolicy.ReasonHeaderSize},
		{"encrypted after", enc, nil, mailpolicy.ReasonEncrypted},
	}
	for _, env := range []struct{ dir, auth, from, rcpt string }{
		{"out", "alice@chat.example", "alice@chat.example", "carol@other.example"},
		{"in", "", "carol@other.example", "bob@chat.example"},
	} {
		s := h.session(t)
		counts := map[mailpolicy.Reason]float64{}
		for _, c := range cases {
			if act := begin(t, s, env.auth, env.from, env.rcpt); act != nil {
				t.Fatalf("%s, %s: RCPT: %+v", env.dir, c.name, act)
			}
			_, act := message(t, s, c.msg)
			counts[c.reason]++
			switch {
			case c.want == nil && act.Code != milter.ActAccept:
				t.Errorf("%s, %s: got %+v, want accepted", env.dir, c.name, act)
			case c.want != nil && (act.Code != milter.ActReplyCode || act.SMTPCode != c.want.Code ||
				act.SMTPText != fmt.Sprintf("%s %s", c.want.Enhanced, c.want.Text)):
				t.Errorf("%s, %s: got %+v, want %s", env.dir, c.name, act, c.want)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		// Each refusal counted once, under its reason.
		for reason, want := range counts {
			if got := testutil.ToFloat64(h.m.Verdicts.WithLabelValues(env.dir, string(reason))); got != want {
				t.Errorf("verdicts{%s,%s} = %v, want %v", env.dir, reason, got, want)
			}
		}
	}
}
