package sender

import (
	"bufio"
	"strings"
	"testing"
)

// The LMTP command parser: never panics, and what it accepts as an
// address holds no byte that would break a header or a command line.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"LHLO postfix", "MAIL FROM:<a@b.test> BODY=8BITMIME SIZE=10", "MAIL FROM:<>", "RCPT TO:<x@[IPv6:::1]>", "RCPT TO: <a@b>", "DATA", "rcpt to:<a@b.c> NOTIFY=NEVER"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := parseCommand(line)
		if err == nil && (c.verb == "MAIL" || c.verb == "RCPT") && strings.ContainsAny(c.addr, "\r\n <>") {
			t.Fatalf("address %q accepted", c.addr)
		}
	})
}

// The answer of a /mxdeliv receiver: a final reply is a well-formed 4xx
// or 5xx line; anything else is delivered or falls back.
func FuzzClassifyAnswer(f *testing.F) {
	f.Add(400, []byte("550 5.1.1 x (forwarded from y)"), 2)
	f.Add(413, []byte("552 Message exceeds maximum size"), 1)
	f.Add(403, []byte("Encryption Needed: Invalid Unencrypted Mail"), 1)
	f.Add(200, []byte("250 OK"), 1)
	f.Add(200, []byte("<html>"), 1)
	f.Add(413, []byte("<html>413</html>"), 1)
	f.Fuzz(func(t *testing.T, status int, body []byte, n int) {
		out, r := classifyAnswer(status, body, n)
		if out == outFinal && (r.OK() || strings.ContainsAny(r.String(), "\r\n") || r.Enhanced[0] != r.String()[0]) {
			t.Fatalf("final reply %q", r.String())
		}
		// Delivered only on a 200 with an SMTP 2xx reply.
		if r2, ok := parseReplyLine(strings.TrimSpace(strings.SplitN(string(body), "\n", 2)[0])); out == outDelivered && (status != 200 || !r.OK() || !ok || !r2.OK()) {
			t.Fatalf("%d %q taken as delivered", status, body)
		}
	})
}

// A peer's SMTP reply: bounded, consistent codes, or an error.
func FuzzReadResponse(f *testing.F) {
	f.Add("250-a\r\n250 b\r\n")
	f.Add("550 5.1.1 no\r\n")
	f.Add("220\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		code, lines, err := readResponse(bufio.NewReaderSize(strings.NewReader(in), 4096))
		if err == nil {
			if code < 200 || code > 599 || len(lines) == 0 || len(lines) > maxReplyLines {
				t.Fatalf("code %d, %d lines", code, len(lines))
			}
			// What goes back to Postfix must parse as a result there.
			if r, err := peerReply(lines); err == nil {
				if back, ok := parseReplyLine(r.String()); !ok || back.Code != r.Code || r.Code/100 == 3 {
					t.Fatalf("reply %q passed on as %q", lines, r.String())
				}
			}
		}
	})
}

// DATA as Postfix sends it: the body kept has CRLF line ends only and
// never the end line.
func FuzzReadData(f *testing.F) {
	f.Add("a\r\n..b\r\n.\r\n")
	f.Add("a\nb\r\n.\n")
	f.Add(".\r\n")
	f.Fuzz(func(t *testing.T, in string) {
		sp := &spool{threshold: 1 << 20, max: 1 << 20}
		if err := readData(bufio.NewReaderSize(strings.NewReader(in), 16), sp); err != nil {
			return
		}
		b, err := sp.finish()
		if err != nil {
			t.Fatal(err)
		}
		got := string(b.mem)
		if strings.Contains(strings.ReplaceAll(got, "\r\n", ""), "\n") || (got != "" && !strings.HasSuffix(got, "\r\n")) {
			t.Fatalf("body %q from %q", got, in)
		}
	})
}
