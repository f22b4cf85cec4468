package receiver

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"chatmail.dev/sidecar/mailpolicy"
)

func decode(in string, stuffed bool, max int64) (string, error) {
	out, err := io.ReadAll(NewDecoder(iotest.OneByteReader(strings.NewReader(in)), stuffed, max))
	return string(out), err
}

func TestDecoder(t *testing.T) {
	for _, c := range []struct {
		in      string
		stuffed bool
		want    string
		err     error
	}{
		{"a\r\n..b\r\n", true, "a\r\n.b\r\n", nil},
		{"a\r\n..b\r\n", false, "a\r\n..b\r\n", nil},
		{"a\r\n.\r\n", true, "a\r\n", nil}, // the final dot line, sent anyway
		{"a\r\n.", true, "a\r\n", nil},
		{"a\r\n.\r\nb\r\n", true, "", ReplyMalformed},
		{"a\r\n.\r\nb\r\n", false, "a\r\n.\r\nb\r\n", nil},
		{"a\nb\n", true, "a\r\nb\r\n", nil}, // LF becomes CRLF, as Postfix makes it
		{"a\r\nb", true, "a\r\nb\r\n", nil}, // the last line is ended
		{"a\rb\r\n", true, "a\rb\r\n", nil}, // a bare CR in the body stays
		{"", true, "", nil},
		{strings.Repeat("x", 100), true, "", ReplyTooLarge},
	} {
		got, err := decode(c.in, c.stuffed, 64)
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%q: err %v, want %v", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q (stuffed %v): %q, %v; want %q", c.in, c.stuffed, got, err, c.want)
		}
	}
}

// TestDecoderLongLines checks lines longer than the decoder's buffer: a
// leading dot is removed once, the middle of a line is never unstuffed.
func TestDecoderLongLines(t *testing.T) {
	long := strings.Repeat("y", 100<<10)
	in := ".." + long + "\r\n" + long + "\r\n." + long + "\n"
	got, err := decode(in, true, 1<<20)
	want := "." + long + "\r\n" + long + "\r\n" + long + "\r\n"
	if err != nil || got != want {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
}

func TestReadHeader(t *testing.T) {
	for _, c := range []struct {
		in   string
		want string
		err  error
	}{
		{"A: b\r\n\r\nbody\r\n", "A: b\r\n\r\n", nil},
		{"A: b\r\n", "A: b\r\n\r\n", nil}, // no body
		{"", "\r\n", nil},
		{"A: b\rc\r\n\r\n", "", ReplyMalformed},
		{strings.Repeat("A: b\r\n", MaxFields+1) + "\r\n", "", mailpolicy.ReplyHeaderTooLarge},
		{"A: " + strings.Repeat("b", MaxHeaderBytes) + "\r\n\r\n", "", mailpolicy.ReplyHeaderTooLarge},
	} {
		h, err := readHeader(bufio.NewReaderSize(strings.NewReader(c.in), 64<<10))
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%.30q: err %v, want %v", c.in, err, c.err)
			}
			continue
		}
		if err != nil || string(h) != c.want {
			t.Errorf("%.30q: %q, %v", c.in, h, err)
		}
	}
}

func TestParseEnvelope(t *testing.T) {
	h := func(kv ...string) http.Header {
		hd := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			hd.Add(kv[i], kv[i+1])
		}
		return hd
	}
	env, bad := ParseEnvelope(h("X-MAIL-FROM", "Alice@Other.Example", "X-MAIL-TO", "Bob@Chat.Example",
		"X-Mail-To", "<bob@chat.example>", "X-Mail-To", "carol@chat.example"), 100)
	if bad != nil || env.From != "Alice@other.example" || !env.Stuffed ||
		strings.Join(env.To, ",") != "bob@chat.example,carol@chat.example" {
		t.Fatalf("%+v %v", env, bad)
	}
	if env, bad := ParseEnvelope(h("X-Mail-To", "b@chat.example", "X-Mail-Body", "raw"), 100); bad != nil || env.From != "" || env.Stuffed {
		t.Errorf("null sender, raw: %+v %v", env, bad)
	}
	for name, c := range map[string]struct {
		h    http.Header
		want mailpolicy.Reply
	}{
		"no recipient":    {h("X-Mail-From", "a@x.example"), ReplyNoRecipients},
		"two senders":     {h("X-Mail-From", "a@x.example", "X-Mail-From", "b@x.example", "X-Mail-To", "b@chat.example"), ReplyBadSender},
		"sender injects":  {h("X-Mail-From", "a@x.example> SIZE=1", "X-Mail-To", "b@chat.example"), ReplyBadSender},
		"rcpt injects":    {h("X-Mail-To", "b@chat.example> NOTIFY=NEVER"), ReplyBadRecipient},
		"rcpt brackets":   {h("X-Mail-To", "<b@chat.example>>"), ReplyBadRecipient},
		"rcpt list":       {h("X-Mail-To", "b@chat.example, c@chat.example"), ReplyBadRecipient},
		"rcpt quoted":     {h("X-Mail-To", `"b c"@chat.example`), ReplyBadRecipient},
		"rcpt percent ok": {h("X-Mail-To", "b%c@chat.example", "X-Mail-Body", "mime"), ReplyBadBodyForm},
		"too many":        {h(append([]string{}, strings.Split(strings.Repeat("X-Mail-To,a@chat.example,", 3), ",")[:6]...)...), mailpolicy.ReplyTooManyRcpts},
	} {
		max := 100
		if name == "too many" {
			max = 2
		}
		if _, bad := ParseEnvelope(c.h, max); bad == nil || *bad != c.want {
			t.Errorf("%s: %v, want %v", name, bad, c.want)
		}
	}
}

// FuzzDecoder checks the decoder against a plain reference: the same
// output whatever the chunking, CRLF lines only, and unstuffing undone by
// stuffing.
func FuzzDecoder(f *testing.F) {
	for _, s := range []string{"a\r\n..b\r\n", "a\n.\n", ".\r\n", "x\r\r\n", "\n\n", "..\r\n.", "a\rb"} {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, in []byte, stuffed bool) {
		a, errA := io.ReadAll(NewDecoder(bytes.NewReader(in), stuffed, 1<<20))
		b, errB := io.ReadAll(NewDecoder(iotest.OneByteReader(bytes.NewReader(in)), stuffed, 1<<20))
		if !bytes.Equal(a, b) || !errors.Is(errA, errB) && (errA == nil) != (errB == nil) {
			t.Fatalf("chunking changed the result: %q %v / %q %v", a, errA, b, errB)
		}
		if errA != nil {
			return
		}
		if len(a) > 0 && !bytes.HasSuffix(a, []byte("\r\n")) {
			t.Fatalf("last line not ended: %q", a)
		}
		for _, l := range bytes.SplitAfter(a, []byte("\r\n")) {
			if i := bytes.IndexByte(l, '\n'); i >= 0 && (i == 0 || l[i-1] != '\r') {
				t.Fatalf("bare LF in %q", a)
			}
		}
		if !stuffed && len(a) < len(in) {
			t.Fatalf("raw body shrank: %q -> %q", in, a)
		}
	})
}

// FuzzEnvelope checks that whatever the request header, an accepted
// envelope holds only addresses safe to write into LMTP commands.
func FuzzEnvelope(f *testing.F) {
	f.Add("alice@other.example", "bob@chat.example", "")
	f.Add("<>", "<Bob@Chat.Example>", "raw")
	f.Add("a@[192.0.2.1]", "b%c@chat.example", "SMTP")
	f.Add("a b@x", "b@chat.example>x", "mime")
	f.Fuzz(func(t *testing.T, from, to, form string) {
		h := http.Header{}
		h.Set(HeaderFrom, from)
		for _, r := range strings.Split(to, ",") {
			h.Add(HeaderTo, r)
		}
		h.Set(HeaderBody, form)
		env, bad := ParseEnvelope(h, 100)
		if bad != nil {
			return
		}
		for _, a := range append([]string{env.From}, env.To...) {
			if strings.ContainsAny(a, "<> \t\r\n\x00") || strings.Count(a, "@") > 1 {
				t.Fatalf("unsafe address %q", a)
			}
		}
		if len(env.To) == 0 {
			t.Fatal("no recipient accepted")
		}
	})
}
