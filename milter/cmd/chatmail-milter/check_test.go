package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The check command is what admins use to answer "why was this rejected?":
// it must give the daemon's verdicts and the documented exit codes.
func TestCheck(t *testing.T) {
	for _, c := range []struct {
		fixture string
		args    []string
		code    int
		reply   string
	}{
		{"enc-v6.eml", []string{"--direction", "out", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 0, "250 "},
		{"enc-v4.eml", []string{"--direction", "in", "--no-dkim", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 0, "250 "},
		{"neg-plain.eml", []string{"--direction", "out", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 1, "523 5.7.1 Encryption Needed: Invalid Unencrypted Mail"},
		{"securejoin-fake.eml", []string{"--direction", "in", "--no-dkim", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 1, "523 "},
		{"securejoin-vc.eml", []string{"--direction", "out", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 0, "250 "},
		{"enc-v6.eml", []string{"--direction", "out", "--from", "mallory@chat.example", "--rcpt", "bob@chat.example"}, 1, "554 "},
		{"enc-v6.eml", []string{"--direction", "sideways", "--rcpt", "bob@chat.example"}, 2, ""},
		{"enc-v6.eml", []string{"--direction", "in", "--from", "alice@chat.example"}, 2, ""},
		// What the milter answers for a header section over its limit.
		{"huge-header", []string{"--direction", "out", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 1, "552 5.3.4 "},
		{"huge-field", []string{"--direction", "in", "--no-dkim", "--from", "alice@chat.example", "--rcpt", "bob@chat.example"}, 1, "552 5.3.4 "},
	} {
		var msg []byte
		var err error
		switch c.fixture {
		case "huge-header":
			msg = []byte(strings.Repeat("X-Filler: "+strings.Repeat("x", 990)+"\r\n", 400) + "\r\nbody\r\n")
		case "huge-field":
			msg = []byte("Subject: x" + strings.Repeat("\r\n "+strings.Repeat("x", 990), 400) + "\r\n\r\nbody\r\n")
		default:
			msg, err = os.ReadFile(filepath.Join("..", "..", "..", "sidecar", "testdata", c.fixture))
		}
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut bytes.Buffer
		code := check(c.args, bytes.NewReader(msg), &out, &errOut)
		if code != c.code || !strings.HasPrefix(out.String(), c.reply) {
			t.Errorf("check %s %v: exit %d, printed %q (stderr %q); want exit %d and %q", c.fixture, c.args, code, out.String(), errOut.String(), c.code, c.reply)
		}
	}
}
