package receiver_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/mxdeliv/receiver"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/dkimstream"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

const (
	alice = "alice@other.example" // a user of another chatmail server
	bob   = "bob@chat.example"
	dave  = "dave@chat.example"
	carol = "carol@chat.example" // blocked
)

// lmtpTxn is a transaction the fake LMTP server completed.
type lmtpTxn struct {
	from string
	to   []string
	data string
}

// fakeLMTP is Dovecot's LMTP as far as the receiver sees it: it records
// the transactions it accepted and the commands it got.
type fakeLMTP struct {
	path string
	mu   sync.Mutex
	// rcpt and data give the replies for a recipient (default 250).
	rcpt, data map[string]string
	txns       []lmtpTxn
	cmds       []string
}

func startLMTP(t *testing.T) *fakeLMTP {
	dir, err := os.MkdirTemp("", "lmtp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	f := &fakeLMTP{path: filepath.Join(dir, "lmtp"), rcpt: map[string]string{}, data: map[string]string{}}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go f.serve(c)
		}
	}()
	return f
}

func (f *fakeLMTP) reply(m map[string]string, rcpt string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r, ok := m[rcpt]; ok {
		return r
	}
	return "250 2.1.5 OK"
}

func (f *fakeLMTP) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	say := func(s string) { _, _ = io.WriteString(c, s+"\r\n") }
	say("220 fake LMTP")
	var cur lmtpTxn
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return
		}
		l = strings.TrimRight(l, "\r\n")
		f.mu.Lock()
		f.cmds = append(f.cmds, strings.Fields(l + " x")[0])
		f.mu.Unlock()
		switch {
		case strings.HasPrefix(l, "LHLO "):
			say("250-fake\r\n250 8BITMIME")
		case strings.HasPrefix(l, "MAIL FROM:<"):
			cur = lmtpTxn{from: strings.TrimSuffix(strings.TrimPrefix(l, "MAIL FROM:<"), ">")}
			say("250 2.1.0 OK")
		case strings.HasPrefix(l, "RCPT TO:<"):
			r := strings.TrimSuffix(strings.TrimPrefix(l, "RCPT TO:<"), ">")
			a := f.reply(f.rcpt, r)
			if strings.HasPrefix(a, "250") {
				cur.to = append(cur.to, r)
			}
			say(a)
		case l == "RSET":
			cur = lmtpTxn{}
			say("250 2.0.0 OK")
		case l == "DATA":
			say("354 OK")
			var b strings.Builder
			for {
				d, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if d == ".\r\n" {
					break
				}
				b.WriteString(strings.TrimPrefix(d, "."))
			}
			cur.data = b.String()
			all := true
			for _, r := range cur.to {
				a := f.reply(f.data, r)
				all = all && strings.HasPrefix(a, "250")
				say(a)
			}
			if all {
				f.mu.Lock()
				f.txns = append(f.txns, cur)
				f.mu.Unlock()
			}
		case l == "QUIT":
			say("221 bye")
			return
		default:
			say("500 what")
		}
	}
}

func (f *fakeLMTP) delivered() []lmtpTxn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]lmtpTxn(nil), f.txns...)
}

type harness struct {
	h     *receiver.Handler
	srv   *httptest.Server
	lmtp  *fakeLMTP
	store *accounts.Store
	key   ed25519.PrivateKey
}

func start(t *testing.T, edit func(*receiver.Handler)) *harness {
	t.Helper()
	ctx := context.Background()
	store, _ := pgtest.Store(t)
	tk := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	for _, a := range []string{bob, dave, carol} {
		if _, _, err := store.Create(ctx, accounts.New{Address: a, PasswordHash: "{PLAIN}x", Tombstone: tk.Hash(a)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.SetBlocked(ctx, carol, true); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	common := config.Defaults()
	common.Mail.Domains = []string{"chat.example"}
	pc := mailpolicy.Defaults() // verify_dkim = true, as the milter
	engine, err := mailpolicy.NewEngine(&common, &pc, nil2(t))
	if err != nil {
		t.Fatal(err)
	}
	engine.SetLookup(dkimstream.Map{"s1._domainkey.other.example": "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)})
	l := startLMTP(t)
	h := &receiver.Handler{
		Engine: engine, Mail: &common.Mail, Accounts: store,
		LMTPNetwork: "unix", LMTPAddr: l.path, LMTPTimeout: 5 * time.Second,
		MaxMessageSize: 1 << 20, MaxRecipients: 100, MaxConcurrent: 4,
		RequestTimeout: 10 * time.Second, SpoolDir: t.TempDir(),
		Unknown: receiver.NewUnknownLimiter(10, 1),
		Metrics: receiver.NewMetrics(prometheus.NewRegistry()),
	}
	if edit != nil {
		edit(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &harness{h: h, srv: srv, lmtp: l, store: store, key: priv}
}

func nil2(*testing.T) *slog.Logger { return slog.New(slog.DiscardHandler) }

// fixture reads a message of sidecar/testdata, sent by alice.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../../sidecar/testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	b = bytes.ReplaceAll(b, []byte("alice@chat.example"), []byte(alice))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}

// sign DKIM-signs msg as other.example, as the sending server does.
func (h *harness) sign(t *testing.T, msg []byte) []byte {
	t.Helper()
	return h.signAs(t, "other.example", msg)
}

// signAs DKIM-signs msg as domain d with the harness's key.
func (h *harness) signAs(t *testing.T, d string, msg []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	opts := &dkim.SignOptions{Domain: d, Selector: "s1", Signer: h.key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}
	if err := dkim.Sign(&b, bytes.NewReader(msg), opts); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// smtpData is msg as filtermail sends it: the SMTP DATA bytes, CRLF and
// dot-stuffed, without the final dot line.
func smtpData(msg []byte) []byte {
	var b bytes.Buffer
	for _, l := range bytes.SplitAfter(msg, []byte("\r\n")) {
		if bytes.HasPrefix(l, []byte(".")) {
			b.WriteByte('.')
		}
		b.Write(l)
	}
	return b.Bytes()
}

// post sends a request in filtermail's shape; chunked hides its length.
func (h *harness) post(t *testing.T, from string, rcpts []string, body []byte, chunked bool, extra ...string) (int, string) {
	t.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = io.MultiReader(r) // no length known: Transfer-Encoding: chunked
	}
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/mxdeliv", r)
	if err != nil {
		t.Fatal(err)
	}
	req.Header["X-MAIL-FROM"] = []string{from} // as filtermail writes it
	req.Header["X-MAIL-TO"] = rcpts
	for i := 0; i < len(extra); i += 2 {
		req.Header.Set(extra[i], extra[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDeliveredAsFiltermailSends(t *testing.T) {
	h := start(t, nil)
	signed := h.sign(t, fixture(t, "enc-v4.eml"))
	// The sending server's Postfix puts its trace above the signature.
	msg := append([]byte("Received: from [192.0.2.7] by mx.other.example (Postfix) with ESMTPSA\r\n"), signed...)
	code, body := h.post(t, alice, []string{bob}, smtpData(msg), false)
	if code != 200 || body != "250 OK" {
		t.Fatalf("%d %q", code, body)
	}
	got := h.lmtp.delivered()
	if len(got) != 1 || got[0].from != alice || strings.Join(got[0].to, ",") != bob {
		t.Fatalf("delivered %+v", got)
	}
	head, rest, _ := strings.Cut(got[0].data, "\r\n\r\n")
	for _, gone := range []string{"Received:", "DKIM-Signature:", "192.0.2.7"} {
		if strings.Contains(head, gone) {
			t.Errorf("%s reached the mailbox:\n%s", gone, head)
		}
	}
	_, wantBody, _ := strings.Cut(string(fixture(t, "enc-v4.eml")), "\r\n\r\n")
	if rest != wantBody {
		t.Errorf("body changed")
	}
	if !strings.Contains(head, "From: <"+alice+">") {
		t.Errorf("From: %s", head)
	}
}

// TestChunkedSeveralRecipients sends as madmail 0.47 does: chunked, raw
// bytes, one POST for the domain with a field per recipient.
func TestChunkedSeveralRecipients(t *testing.T) {
	h := start(t, nil)
	msg := h.sign(t, fixture(t, "enc-v6.eml"))
	code, body := h.post(t, alice, []string{bob, "<" + dave + ">", bob}, msg, true)
	if code != 200 || body != "250 OK" {
		t.Fatalf("%d %q", code, body)
	}
	got := h.lmtp.delivered()
	if len(got) != 1 || strings.Join(got[0].to, ",") != bob+","+dave {
		t.Fatalf("delivered %+v", got)
	}
}

func TestRefusals(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.MaxMessageSize = 64 << 10 })
	enc := h.sign(t, fixture(t, "enc-v4.eml"))
	tampered := bytes.Replace(enc, []byte("fixture-multipar"), []byte("fixture-forged00"), 1) // a signed field changed
	for _, c := range []struct {
		name  string
		from  string
		rcpts []string
		msg   []byte
		code  int
		reply string
	}{
		{"cleartext", alice, []string{bob}, h.sign(t, fixture(t, "neg-plain.eml")), 400, mailpolicy.ReplyCleartext.String()},
		{"unsigned", alice, []string{bob}, fixture(t, "enc-v4.eml"), 400, mailpolicy.ReplyUnsigned.String()},
		{"forged", alice, []string{bob}, tampered, 400, mailpolicy.ReplyInvalidSig.String()},
		{"not ours", alice, []string{"bob@else.example"}, enc, 400, receiver.ReplyRelayDenied.String()},
		{"unknown", alice, []string{"nobody@chat.example"}, enc, 400, receiver.ReplyUnknownUser.String()},
		{"blocked", alice, []string{carol}, enc, 400, receiver.ReplyUnknownUser.String()},
		{"one unknown of two", alice, []string{bob, "nobody@chat.example"}, enc, 400, receiver.ReplyUnknownUser.String()},
		{"no recipient", alice, nil, enc, 400, receiver.ReplyNoRecipients.String()},
		{"too large", alice, []string{bob}, append(enc, bytes.Repeat([]byte("x\r\n"), 40<<10)...), 413, receiver.ReplyTooLarge.String()},
		{"header too large", alice, []string{bob}, append(bytes.Repeat([]byte("X-A: b\r\n"), 1001), enc...), 413, mailpolicy.ReplyHeaderTooLarge.String()},
		{"lone dot", alice, []string{bob}, []byte("From: <" + alice + ">\r\n\r\n.\r\nmore\r\n"), 400, receiver.ReplyMalformed.String()},
	} {
		code, body := h.post(t, c.from, c.rcpts, c.msg, false)
		if code != c.code || body != c.reply {
			t.Errorf("%s: %d %q, want %d %q", c.name, code, body, c.code, c.reply)
		}
	}
	if got := h.lmtp.delivered(); len(got) != 0 {
		t.Errorf("delivered %d", len(got))
	}
	// GET and friends.
	resp, err := http.Get(h.srv.URL + "/mxdeliv")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 405 || string(b) != "Method Not Allowed" {
		t.Errorf("GET: %d %q", resp.StatusCode, b)
	}
	// A Content-Length beyond any message is refused before the body.
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL, strings.NewReader("x"))
	req.ContentLength = 1 << 40
	req.Header.Set("X-Mail-To", bob)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		if resp.StatusCode != 413 {
			t.Errorf("huge Content-Length: %d", resp.StatusCode)
		}
		resp.Body.Close()
	}
}

// TestUnknownPaced checks that unknown-recipient answers are paced per
// From domain, and that a paced domain learns nothing more: its requests
// to existing users get the same answer.
func TestUnknownPaced(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.Unknown = receiver.NewUnknownLimiter(2, 1) })
	enc := h.sign(t, fixture(t, "enc-v4.eml"))
	for i := range 2 {
		if code, body := h.post(t, alice, []string{"nobody@chat.example"}, enc, false); code != 400 || body != receiver.ReplyUnknownUser.String() {
			t.Fatalf("probe %d: %d %q", i, code, body)
		}
	}
	for _, rcpt := range []string{"nobody@chat.example", bob} {
		if code, body := h.post(t, alice, []string{rcpt}, enc, false); code != 503 || body != receiver.ReplyUnknownPaced.String() {
			t.Errorf("paced, to %s: %d %q", rcpt, code, body)
		}
	}
}

// TestUnknownPacedBySigner: the pace is the signing domain's, so a prober
// that signs as other.example cannot get a fresh bucket per From
// subdomain (relaxed alignment lets it use any).
func TestUnknownPacedBySigner(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.Unknown = receiver.NewUnknownLimiter(2, 1) })
	keys := dkimstream.Map{"s1._domainkey.other.example": "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(h.key.Public().(ed25519.PublicKey))}
	for i := range 4 {
		keys[fmt.Sprintf("s1._domainkey.p%d.other.example", i)] = keys["s1._domainkey.other.example"] // a wildcard record
	}
	h.h.Engine.SetLookup(keys)
	for i := range 4 {
		// Subdomains of From (relaxed alignment), then of the signer too
		// (a wildcard key record): one registered domain, one pace.
		from := fmt.Sprintf("x@p%d.other.example", i)
		signer := "other.example"
		if i%2 == 1 {
			signer = fmt.Sprintf("p%d.other.example", i)
		}
		enc := h.signAs(t, signer, bytes.ReplaceAll(fixture(t, "enc-v4.eml"), []byte(alice), []byte(from)))
		code, body := h.post(t, from, []string{"nobody@chat.example"}, enc, false)
		want := receiver.ReplyUnknownUser.String()
		if i >= 2 {
			want = receiver.ReplyUnknownPaced.String()
		}
		if body != want {
			t.Errorf("probe %d from %s: %d %q, want %q", i, from, code, body, want)
		}
	}
}

func TestLMTPDown(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.LMTPAddr = "/nonexistent/lmtp" })
	code, body := h.post(t, alice, []string{bob}, h.sign(t, fixture(t, "enc-v4.eml")), false)
	if code != 503 || body != receiver.ReplyDeliveryDown.String() {
		t.Fatalf("%d %q", code, body)
	}
}

func TestStoreDown(t *testing.T) {
	h := start(t, nil)
	h.store.Close()
	code, body := h.post(t, alice, []string{bob}, h.sign(t, fixture(t, "enc-v4.eml")), false)
	if code != 503 || body != receiver.ReplyStoreDown.String() {
		t.Fatalf("%d %q", code, body)
	}
	if n := len(h.lmtp.delivered()); n != 0 {
		t.Errorf("delivered %d", n)
	}
}

// TestLMTPRefusesRecipient: nothing is delivered to anyone, the
// transaction is reset before DATA.
func TestLMTPRefusesRecipient(t *testing.T) {
	h := start(t, nil)
	h.lmtp.rcpt[dave] = "552 5.2.2 <dave@chat.example> Mailbox is full"
	code, body := h.post(t, alice, []string{bob, dave}, h.sign(t, fixture(t, "enc-v4.eml")), false)
	if code != 400 || body != "552 5.2.2 <dave@chat.example> Mailbox is full" {
		t.Fatalf("%d %q", code, body)
	}
	h.lmtp.mu.Lock()
	cmds := strings.Join(h.lmtp.cmds, " ")
	h.lmtp.mu.Unlock()
	if strings.Contains(cmds, "DATA") || !strings.Contains(cmds, "RSET") {
		t.Errorf("commands %s", cmds)
	}
	h.lmtp.rcpt[dave] = "452 4.2.2 Mailbox is full"
	if code, _ := h.post(t, alice, []string{bob, dave}, h.sign(t, fixture(t, "enc-v4.eml")), false); code != 503 {
		t.Errorf("temporary refusal: %d", code)
	}
}

// TestLMTPMixed: some delivered, some not, after DATA: the sender must
// send again (duplicates over loss).
func TestLMTPMixed(t *testing.T) {
	h := start(t, nil)
	h.lmtp.data[dave] = "552 5.2.2 Mailbox is full"
	code, body := h.post(t, alice, []string{bob, dave}, h.sign(t, fixture(t, "enc-v4.eml")), false)
	if code != 503 || body != receiver.ReplyPartial.String() {
		t.Fatalf("%d %q", code, body)
	}
}

// TestLMTPTemporaryDecides: after DATA, one recipient refused for good
// and one for now: the answer is the temporary one, so the sender bounces
// no one and tries both again.
func TestLMTPTemporaryDecides(t *testing.T) {
	h := start(t, nil)
	h.lmtp.data[bob] = "552 5.2.2 <bob@chat.example> Mailbox is full"
	h.lmtp.data[dave] = "451 4.3.0 Temporary failure"
	code, body := h.post(t, alice, []string{bob, dave}, h.sign(t, fixture(t, "enc-v4.eml")), false)
	if code != 503 || body != "451 4.3.0 Temporary failure" {
		t.Fatalf("%d %q, want 503 with the temporary reply", code, body)
	}
}

// TestSlowSender: a sender that stops sending is cut off at the request
// timeout, and nothing is delivered.
func TestSlowSender(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.RequestTimeout = 500 * time.Millisecond })
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() { _, _ = pw.Write([]byte("From: <" + alice + ">\r\n")) }() // and then nothing
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL, pr)
	req.Header.Set("X-Mail-To", bob)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Error("accepted")
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cut off after %v", d)
	}
	if n := len(h.lmtp.delivered()); n != 0 {
		t.Errorf("delivered %d", n)
	}
}

// TestBurstWaits: a burst over MaxConcurrent waits for slots instead of
// being answered 503 (which sends a peer to SMTP for half an hour).
func TestBurstWaits(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.MaxConcurrent = 1 })
	msg := h.sign(t, fixture(t, "enc-v4.eml"))
	codes := make(chan int, 4)
	for range 4 {
		go func() {
			code, _ := h.post(t, alice, []string{bob}, msg, false)
			codes <- code
		}()
	}
	for range 4 {
		if code := <-codes; code != http.StatusOK {
			t.Errorf("a request of the burst: %d", code)
		}
	}
}

// TestPeerShare: one client address (with tls_listen: anyone on the
// Internet) that trickles its bodies holds at most half of the
// slots (more of its requests wait, then get 503); another address still
// gets in, and so does a web server in front on loopback.
func TestPeerShare(t *testing.T) {
	h := start(t, func(h *receiver.Handler) { h.MaxConcurrent = 4; h.SlotWait = 200 * time.Millisecond })
	var stalled []*io.PipeWriter
	done := make(chan int, 3)
	for range 2 {
		pr, pw := io.Pipe()
		stalled = append(stalled, pw)
		req := httptest.NewRequest(http.MethodPost, "/mxdeliv", pr)
		req.RemoteAddr = "192.0.2.7:40000"
		req.Header.Set("X-Mail-To", bob)
		go func() {
			w := httptest.NewRecorder()
			h.h.ServeHTTP(w, req)
			done <- w.Code
		}()
	}
	defer func() {
		for _, pw := range stalled {
			pw.CloseWithError(io.ErrUnexpectedEOF)
		}
		for range 2 {
			<-done
		}
	}()
	// The third request of that address is refused at once, once its
	// first two have started.
	try := func(remote string) int {
		req := httptest.NewRequest(http.MethodPost, "/mxdeliv", bytes.NewReader(h.sign(t, fixture(t, "enc-v4.eml"))))
		req.RemoteAddr = remote
		req.Header.Set("X-Mail-From", alice)
		req.Header.Set("X-Mail-To", bob)
		req.Header.Set("X-Mail-Body", "raw")
		w := httptest.NewRecorder()
		h.h.ServeHTTP(w, req)
		return w.Code
	}
	deadline := time.Now().Add(5 * time.Second)
	for try("192.0.2.7:40001") != http.StatusServiceUnavailable {
		if time.Now().After(deadline) {
			t.Fatal("a third request of the same address was served")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := try("[2001:db8::1]:5"); code != http.StatusOK {
		t.Errorf("another address: %d", code)
	}
	if code := try("127.0.0.1:9"); code != http.StatusOK {
		t.Errorf("loopback (a web server in front): %d", code)
	}
}

// TestNoLog: under No-Log nothing names a sender or recipient, in
// deliveries and refusals alike.
func TestNoLog(t *testing.T) {
	log, _, buf := logtest.New(true)
	h := start(t, func(h *receiver.Handler) { h.Log = log })
	enc := h.sign(t, fixture(t, "enc-v4.eml"))
	h.post(t, alice, []string{bob}, enc, false)
	h.post(t, alice, []string{"nobody@chat.example"}, enc, false)
	h.post(t, alice, []string{carol}, enc, false)
	h.lmtp.data[dave] = "552 5.2.2 <dave@chat.example> Mailbox is full"
	h.post(t, alice, []string{bob, dave}, enc, false)
	out := buf.String()
	if !strings.Contains(out, "delivered") {
		t.Fatalf("nothing logged:\n%s", out)
	}
	if leaks := logtest.Leaks(out, alice, bob, dave, carol, "nobody@chat.example"); len(leaks) > 0 {
		t.Errorf("leaked %v:\n%s", leaks, out)
	}
	if s := logtest.Shapes(out); len(s) > 0 {
		t.Errorf("identity shapes: %v", s)
	}
}

func TestMetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	receiver.NewMetrics(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
