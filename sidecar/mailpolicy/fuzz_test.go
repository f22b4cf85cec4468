package mailpolicy

import (
	"bytes"
	"context"
	"net/textproto"
	"slices"
	"strings"
	"testing"
)

// fuzzShapes are the accepted messages FuzzHeaderFields puts fields into,
// with an envelope that accepts each incoming.
var fuzzShapes = []struct {
	file   string
	sender string
}{
	{"enc-v4.eml", alice},
	{"securejoin-vc.eml", alice},
	{"bounce.eml", ""},
}

// FuzzHeaderFields puts fields the fuzzer writes (extra, odd-named, copies
// of the message's own) at any place of an accepted message's header and
// runs the /mxdeliv receiver's path on it: Replay (the header policy),
// then Apply. A message delivered holds only allowlisted fields, each at
// most once; judged again, it needs no change (no field the policy would
// drop or rewrite); and the MTA, making the verdict's changes by name and
// index as Postfix makes a milter's, arrives at the same message.
func FuzzHeaderFields(f *testing.F) {
	f.Add("\u017fubject: decoy\n", uint8(2), uint8(0), uint8(0), uint8(0), false)
	f.Add("\u017fubject: THIS CLEARTEXT WOULD BE STORED\n", uint8(3), uint8(0), uint8(0), uint8(0), false)
	f.Add("Message-ID: <forged@evil.example>\nTo: <dave@chat.example>\n", uint8(0), uint8(0), uint8(0), uint8(0), false)
	f.Add("X-Mar\u212Aer: x\nSubject : y\n", uint8(1), uint8(0), uint8(0), uint8(0), true)
	f.Add("message-id: <a@b>\n", uint8(9), uint8(0), uint8(0), uint8(0), false)
	f.Add("X-Junk: a\n b\n\tc\nReceived: x\nReceived: y\n", uint8(4), uint8(3), uint8(0), uint8(1), false)
	f.Add("Secure-Join: vc-request\nsecure-join-invitenumber: INVITEnumber123\n", uint8(12), uint8(0), uint8(0), uint8(1), false)
	f.Add("Auto-Submitted: auto-generated\n", uint8(0), uint8(4), uint8(8), uint8(2), false)
	e := testEngine(f, func(c *Config) { c.RateBurst = 1 << 30 })
	type shape struct {
		fields []string
		body   string
		sender string
	}
	var shapes []shape
	for _, s := range fuzzShapes {
		raw := string(fixture(f, s.file))
		head, body, ok := strings.Cut(raw, "\r\n\r\n")
		if !ok {
			f.Fatalf("%s: no header section", s.file)
		}
		var fields []string
		for _, l := range strings.Split(head, "\r\n") {
			if (l[0] == ' ' || l[0] == '\t') && len(fields) > 0 {
				fields[len(fields)-1] += "\r\n" + l
				continue
			}
			fields = append(fields, l)
		}
		shapes = append(shapes, shape{fields, body, s.sender})
	}
	f.Fuzz(func(t *testing.T, extra string, at, copyOf, copyAt, which uint8, out bool) {
		s := shapes[int(which)%len(shapes)]
		fields := append([]string(nil), s.fields...)
		if copyOf != 0 {
			c := fields[int(copyOf-1)%len(fields)]
			fields = slices.Insert(fields, int(copyAt)%(len(fields)+1), c)
		}
		// The fuzzer's lines, without empty ones: they would end the
		// header section.
		var lines []string
		for _, l := range strings.Split(extra, "\n") {
			if l = strings.TrimRight(l, "\r"); l != "" {
				lines = append(lines, l)
			}
		}
		fields = slices.Insert(fields, int(at)%(len(fields)+1), lines...)
		msg := []byte(strings.Join(fields, "\r\n") + "\r\n\r\n" + s.body)

		env := envelope{"", s.sender, []string{bob}}
		if out {
			env = envelope{alice, alice, []string{carol}}
		}
		v := replayFuzz(t, e, env, msg)
		if v == nil || !v.Reply.Accepted() {
			return
		}
		if v.Reason == ReasonNotChatmail {
			t.Fatalf("out of scope: %+v", v)
		}
		delivered, err := Apply(msg, v)
		if err != nil {
			t.Fatalf("accepted, but: %v", err)
		}
		head, _, _ := bytes.Cut(delivered, []byte("\n\n"))
		seen := make(map[string]bool)
		for _, l := range strings.Split(string(head), "\n") {
			if l == "" || l[0] == ' ' || l[0] == '\t' {
				continue
			}
			name, _, _ := strings.Cut(l, ":")
			canon := textproto.CanonicalMIMEHeaderKey(name)
			if !fieldName(name) || fieldRules[canon] == nil || seen[canon] {
				t.Fatalf("field %q delivered\ninput:\n%s\ndelivered:\n%s", name, msg, head)
			}
			seen[canon] = true
		}
		again := replayFuzz(t, e, env, bytes.ReplaceAll(delivered, []byte("\n"), []byte("\r\n")))
		if again == nil || !again.Reply.Accepted() || again.Reason != v.Reason || len(again.Changes) != 0 {
			t.Fatalf("delivered, then judged again: %+v\ninput:\n%s\ndelivered:\n%s", again, msg, head)
		}
		byMTA, err := applyAsMTA(msg, v)
		if err != nil {
			t.Fatalf("the MTA cannot make the changes: %v\ninput:\n%s", err, msg)
		}
		if !bytes.Equal(byMTA, delivered) {
			t.Fatalf("the policy delivers\n%s\nthe MTA would make\n%s\nof\n%s", delivered, byMTA, msg)
		}
	})
}

// replayFuzz runs one transaction; nil when Replay takes the header for
// malformed (the receiver refuses the message then).
func replayFuzz(t *testing.T, e *Engine, env envelope, msg []byte) *Verdict {
	txn := e.Begin(env.auth, env.from)
	defer txn.Close()
	for _, r := range env.rcpts {
		if v := txn.Rcpt(r); v != nil {
			t.Fatalf("rcpt refused: %+v", v)
		}
	}
	v, err := Replay(context.Background(), txn, bytes.NewReader(msg))
	if err != nil {
		return nil
	}
	return v
}
