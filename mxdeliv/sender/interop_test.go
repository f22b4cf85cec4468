package sender

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// strictRelay is a /mxdeliv receiver that takes a request only in the exact
// form the reference relay's receiver (filtermail-incoming behind nginx's
// location /mxdeliv) reads, as its documented format says, and refuses
// anything else as it would (405, 413, 400 with an SMTP text): POST to
// /mxdeliv; one X-Mail-From, empty (the null sender) or a bare address;
// one X-Mail-To per recipient, a bare address each, of its own domain;
// the body the SMTP DATA bytes: CRLF line ends only, dot-stuffed, no final
// "." line; at most maxSize bytes. What it took is recorded un-stuffed, so
// a test compares it with what Postfix handed over.
type strictRelay struct {
	domain  string
	maxSize int64

	mu       sync.Mutex
	accepted []strictMessage
	refused  []string
	protos   []string
}

type strictMessage struct {
	from    string
	to      []string
	message string // the body un-stuffed: the message as the sender's client wrote it
}

func (s *strictRelay) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	status, text := s.check(r)
	s.mu.Lock()
	s.protos = append(s.protos, r.Proto)
	if status != http.StatusOK {
		s.refused = append(s.refused, fmt.Sprintf("%d %s", status, text))
	}
	s.mu.Unlock()
	w.WriteHeader(status)
	_, _ = io.WriteString(w, text)
}

func (s *strictRelay) check(r *http.Request) (int, string) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, "Method Not Allowed"
	}
	if r.URL.Path != "/mxdeliv" || r.URL.RawQuery != "" {
		return http.StatusNotFound, "not /mxdeliv"
	}
	from := r.Header.Values("X-Mail-From")
	if len(from) != 1 || (from[0] != "" && !bareAddress(from[0])) {
		return http.StatusBadRequest, fmt.Sprintf("500 X-Mail-From %q: want one bare address or empty", from)
	}
	to := r.Header.Values("X-Mail-To")
	if len(to) == 0 {
		return http.StatusBadRequest, "554 no X-Mail-To"
	}
	for _, rc := range to {
		if !bareAddress(rc) || !strings.HasSuffix(rc, "@"+s.domain) {
			return http.StatusBadRequest, fmt.Sprintf("550 X-Mail-To %q: want one bare address of %s per header", rc, s.domain)
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, s.maxSize+1))
	if err != nil {
		return http.StatusBadRequest, "500 body: " + err.Error()
	}
	if int64(len(body)) > s.maxSize {
		return http.StatusRequestEntityTooLarge, "552 Message exceeds maximum size"
	}
	message, err := unstuffStrict(body)
	if err != nil {
		return http.StatusBadRequest, "500 Invalid DATA: " + err.Error()
	}
	s.mu.Lock()
	s.accepted = append(s.accepted, strictMessage{from: from[0], to: to, message: message})
	s.mu.Unlock()
	return http.StatusOK, "250 OK"
}

// bareAddress: local@domain without angle brackets, spaces, controls,
// commas or ESMTP parameters, as the reference puts in its headers.
func bareAddress(a string) bool {
	local, domain, ok := strings.Cut(a, "@")
	if !ok || local == "" || domain == "" || strings.Contains(domain, "@") {
		return false
	}
	return !strings.ContainsFunc(a, func(c rune) bool { return c <= ' ' || c == 0x7f || strings.ContainsRune("<>,;\"", c) })
}

// unstuffStrict undoes the dot-stuffing of SMTP DATA bytes, refusing what
// a sender following the format never sends: a bare CR or LF, a last line
// without CRLF, a line that is a single "." (the end of DATA, which
// stuffing doubles) or the final "." line itself.
func unstuffStrict(body []byte) (string, error) {
	if len(body) == 0 {
		return "", fmt.Errorf("empty")
	}
	if !bytes.HasSuffix(body, []byte("\r\n")) {
		return "", fmt.Errorf("does not end with CRLF")
	}
	var out strings.Builder
	for i, line := range bytes.SplitAfter(body[:len(body)-2], []byte("\r\n")) {
		line = bytes.TrimSuffix(line, []byte("\r\n"))
		if bytes.ContainsAny(line, "\r\n") {
			return "", fmt.Errorf("line %d: bare CR or LF", i+1)
		}
		if string(line) == "." {
			return "", fmt.Errorf("line %d: a lone dot (not stuffed, or the final dot line sent)", i+1)
		}
		if bytes.HasPrefix(line, []byte(".")) {
			line = line[1:]
		}
		out.Write(line)
		out.WriteString("\r\n")
	}
	return out.String(), nil
}

func startStrictRelay(t *testing.T, e *testEnv, host string, http2 bool) *strictRelay {
	t.Helper()
	relay := &strictRelay{domain: "a.test", maxSize: 4 << 20}
	srv := httptest.NewUnstartedServer(relay)
	srv.EnableHTTP2 = http2
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{e.cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	e.rt.add(host+":443", srv.Listener.Addr().String())
	return relay
}

// stuff dot-stuffs message (CRLF lines) and ends it as Postfix sends DATA.
func stuff(message string) string {
	var b strings.Builder
	for line := range strings.Lines(message) {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	return b.String() + ".\r\n"
}

// Interop: what Postfix hands our transport over LMTP reaches a receiver
// that checks the reference relay's format strictly, over HTTP/1.1 and
// HTTP/2, and is taken there byte for byte: the message as its writer
// made it, the null sender of a bounce, several recipients in one POST, a
// body spooled to disk; SMTP is never needed.
func TestInteropStrictReferenceReceiver(t *testing.T) {
	dotty := "From: <alice@us.test>\r\nTo: <b@a.test>\r\nSubject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n" +
		"Content-Type: multipart/encrypted;\r\n boundary=\".x\"\r\n\r\n" +
		".\r\n..\r\n...\r\n.x\r\n--.x\r\n. \r\nl\xc3\xa4nger\r\n" + strings.Repeat("=", 990) + "\r\n.\r\n--.x--\r\n"
	big := "From: <alice@us.test>\r\nTo: <b@a.test>\r\n\r\n" + strings.Repeat(".a dotted line of a larger body\r\n", 40000)
	cases := []struct {
		name    string
		from    string
		to      []string
		message string
	}{
		{"dot lines", "alice@us.test", []string{"b@a.test"}, dotty},
		{"null sender", "", []string{"b@a.test"}, "From: MAILER-DAEMON@us.test\r\nTo: b@a.test\r\n\r\n.\r\nreport\r\n"},
		{"two recipients", "alice@us.test", []string{"b@a.test", "c@a.test"}, dotty},
		{"spooled body", "alice@us.test", []string{"b@a.test", "c@a.test"}, big},
	}
	for _, http2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", http2), func(t *testing.T) {
			e := newTestEnv(t)
			relay := startStrictRelay(t, e, "mx1.a.test", http2)
			mta := e.smtp("mx1.a.test")
			c := startLMTP(t, &Server{Deliverer: e.sender(nil), SpoolThreshold: 64 << 10})
			cmd(t, c, 250, "LHLO postfix")
			for i, tc := range cases {
				cmd(t, c, 250, "MAIL FROM:<%s>", tc.from)
				for _, rc := range tc.to {
					cmd(t, c, 250, "RCPT TO:<%s>", rc)
				}
				cmd(t, c, 354, "DATA")
				if _, err := c.W.WriteString(stuff(tc.message)); err != nil {
					t.Fatal(err)
				}
				if err := c.W.Flush(); err != nil {
					t.Fatal(err)
				}
				for range tc.to {
					expect(t, c, 250)
				}
				relay.mu.Lock()
				refused, accepted := relay.refused, relay.accepted
				relay.mu.Unlock()
				if len(refused) > 0 || len(accepted) != i+1 {
					t.Fatalf("%s: the strict receiver refused %q, accepted %d of %d", tc.name, refused, len(accepted), i+1)
				}
				got := accepted[i]
				if got.from != tc.from || strings.Join(got.to, " ") != strings.Join(tc.to, " ") {
					t.Errorf("%s: envelope %q %q, want %q %q", tc.name, got.from, got.to, tc.from, tc.to)
				}
				if got.message != tc.message {
					t.Errorf("%s: the receiver got a different message (%d bytes, want %d)", tc.name, len(got.message), len(tc.message))
				}
			}
			wantProto := "HTTP/1.1"
			if http2 {
				wantProto = "HTTP/2.0"
			}
			relay.mu.Lock()
			defer relay.mu.Unlock()
			for _, p := range relay.protos {
				if p != wantProto {
					t.Errorf("request over %s, want %s", p, wantProto)
				}
			}
			if n := len(mta.transactions()); n != 0 {
				t.Errorf("%d SMTP transactions, want none", n)
			}
		})
	}
}

// The strict receiver itself refuses what the reference would not take,
// so the test above cannot pass by a receiver that takes anything.
func TestStrictRelayRefuses(t *testing.T) {
	relay := &strictRelay{domain: "a.test", maxSize: 100}
	good := "From: a@us.test\r\n\r\n..x\r\n"
	cases := []struct {
		name   string
		method string
		path   string
		from   []string
		to     []string
		body   string
		status int
	}{
		{"accepted", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, good, 200},
		{"GET", "GET", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, "", 405},
		{"other path", "POST", "/deliver", []string{"a@us.test"}, []string{"b@a.test"}, good, 404},
		{"angle brackets", "POST", "/mxdeliv", []string{"<a@us.test>"}, []string{"b@a.test"}, good, 400},
		{"two senders", "POST", "/mxdeliv", []string{"a@us.test", "c@us.test"}, []string{"b@a.test"}, good, 400},
		{"recipient list in one header", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test, c@a.test"}, good, 400},
		{"foreign recipient", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@other.test"}, good, 400},
		{"no recipient", "POST", "/mxdeliv", []string{"a@us.test"}, nil, good, 400},
		{"bare LF", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, "From: a@us.test\n\nx\r\n", 400},
		{"final dot line", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, good + ".\r\n", 400},
		{"no CRLF at the end", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, "From: a@us.test\r\n\r\nx", 400},
		{"too big", "POST", "/mxdeliv", []string{"a@us.test"}, []string{"b@a.test"}, strings.Repeat("x\r\n", 40), 413},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		for _, f := range tc.from {
			r.Header.Add("X-Mail-From", f)
		}
		for _, rc := range tc.to {
			r.Header.Add("X-Mail-To", rc)
		}
		w := httptest.NewRecorder()
		relay.ServeHTTP(w, r)
		if w.Code != tc.status {
			t.Errorf("%s: %d %q, want %d", tc.name, w.Code, w.Body.String(), tc.status)
		}
	}
}
