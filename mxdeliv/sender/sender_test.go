package sender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The body as Postfix hands it over: CRLF, dot-stuffed, no final dot.
const testBody = "From: a@us.test\r\nTo: b@a.test\r\n\r\n..a stuffed line\r\nbody\r\n"

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// testEnv is a world of fake mail servers: a.test has MX mx1.a.test
// (preference 10) and mx2.a.test (20), nothing listens anywhere unless a
// test routes it.
type testEnv struct {
	t     *testing.T
	cert  tls.Certificate
	pool  *x509.CertPool
	dns   *fakeDNS
	rt    *router
	clock *clock
}

func newTestEnv(t *testing.T) *testEnv {
	cert, pool := testCert(t, "mx1.a.test", "mx2.a.test", "implicit.test")
	return &testEnv{
		t: t, cert: cert, pool: pool,
		dns: &fakeDNS{
			mx: map[string][]*net.MX{
				"a.test":    {{Host: "mx2.a.test.", Pref: 20}, {Host: "mx1.a.test.", Pref: 10}},
				"null.test": {{Host: ".", Pref: 0}},
			},
			hosts: map[string]bool{"implicit.test": true},
			errs:  map[string]bool{"broken.test": true},
		},
		rt:    &router{},
		clock: &clock{t: time.Unix(1e9, 0)},
	}
}

func (e *testEnv) sender(mod func(*Config)) *Sender {
	cfg := Config{
		Hostname:        "mx.us.test",
		Resolver:        e.dns,
		RootCAs:         e.pool,
		Dial:            e.rt.dial,
		Now:             e.clock.now,
		ConnectTimeout:  2 * time.Second,
		HTTPTimeout:     5 * time.Second,
		CommandTimeout:  5 * time.Second,
		DataTimeout:     5 * time.Second,
		DeliveryTimeout: 20 * time.Second,
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg, nil, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// receiver starts an HTTPS receiver for host.
func (e *testEnv) receiver(host string, status int, text string) *fakeReceiver {
	f := newReceiver(e.t, e.cert, status, text)
	e.rt.add(host+":443", f.addr())
	return f
}

// smtp starts an SMTP server for host.
func (e *testEnv) smtp(host string) *fakeSMTP {
	f := newSMTP(e.t, e.cert)
	e.rt.add(host+":25", f.addr())
	return f
}

func deliver(s *Sender, domain string, rcpts ...string) []Reply {
	return s.Deliver(context.Background(), domain, Envelope{From: "alice@us.test", To: rcpts}, BodyFromBytes([]byte(testBody)))
}

func codes(rs []Reply) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

func wantCodes(t *testing.T, rs []Reply, want ...int) {
	t.Helper()
	if len(rs) != len(want) {
		t.Fatalf("replies %q, want codes %v", codes(rs), want)
	}
	for i, r := range rs {
		if r.Code != want[i] {
			t.Fatalf("replies %q, want codes %v", codes(rs), want)
		}
	}
}

// The reference relay's success: one POST for the domain with the
// envelope in headers and the body unchanged; SMTP is not touched.
func TestPostDelivered(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	mta := e.smtp("mx1.a.test")
	rs := deliver(e.sender(nil), "a.test", "b@a.test", "c@a.test")
	wantCodes(t, rs, 250, 250)
	if rs[0].Via != ViaHTTPS {
		t.Errorf("via %q", rs[0].Via)
	}
	ps := rcv.posts()
	if len(ps) != 1 || ps[0].from != "alice@us.test" || !slices.Equal(ps[0].to, []string{"b@a.test", "c@a.test"}) || ps[0].body != testBody {
		t.Fatalf("posted %+v", ps)
	}
	if len(mta.transactions()) != 0 {
		t.Error("SMTP used after a delivered POST")
	}
}

// Definite answers are final: the recipients get the mapped reply and
// SMTP is never tried, so it cannot take what the receiver's policy
// refused.
func TestPostFinalAnswers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		text   string
		rcpts  []string
		want   int
		enh    string
	}{
		{"relay encryption needed", 400, "523 Encryption Needed: Invalid Unencrypted Mail", []string{"b@a.test", "c@a.test"}, 523, "5.0.0"},
		{"relay DKIM", 400, "554 5.7.1 No DKIM signature found", []string{"b@a.test", "c@a.test"}, 554, "5.7.1"},
		{"relay temporary", 400, "451 4.3.0 Local error", []string{"b@a.test"}, 451, "4.3.0"},
		{"relay unknown user, one recipient", 400, "550 5.1.1 <b@a.test>: Recipient address rejected (forwarded from x)", []string{"b@a.test"}, 550, "5.1.1"},
		{"relay too big", 413, "552 Message exceeds maximum size", []string{"b@a.test"}, 552, "5.0.0"},
		{"madmail encryption needed", 403, "Encryption Needed: Invalid Unencrypted Mail", []string{"b@a.test"}, 523, "5.7.1"},
		{"madmail too large", 413, "message too large", []string{"b@a.test"}, 552, "5.3.4"},
		{"madmail no valid recipients", 404, "No valid recipients", []string{"b@a.test", "c@a.test"}, 550, "5.1.1"},
		{"madmail quota", 507, "quota", []string{"b@a.test"}, 452, "4.2.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.receiver("mx1.a.test", tc.status, tc.text)
			mta := e.smtp("mx1.a.test")
			rs := deliver(e.sender(nil), "a.test", tc.rcpts...)
			want := make([]int, len(tc.rcpts))
			for i := range want {
				want[i] = tc.want
			}
			wantCodes(t, rs, want...)
			if rs[0].Enhanced != tc.enh || rs[0].Via != ViaHTTPS {
				t.Errorf("reply %q via %q, want enhanced %s via https", rs[0], rs[0].Via, tc.enh)
			}
			if len(mta.transactions()) != 0 {
				t.Error("SMTP tried after a final answer")
			}
		})
	}
}

// No usable /mxdeliv (madmail's 405, a plain 404, 5xx, 429, a 400 the
// receiver did not write as SMTP text, a host that refuses connections,
// and a rejection of one recipient among several) falls back to SMTP on
// the same host in the same attempt, which answers per recipient.
func TestPostFallbackToSMTP(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int // 0: nothing listens on 443
		text   string
	}{
		{"madmail 405", 405, "Method not allowed"},
		{"plain 404", 404, "<html>Not Found</html>"},
		{"503", 503, "busy"},
		{"429", 429, "slow down"},
		{"500", 500, "error"},
		{"400 not SMTP", 400, "Missing X-Mail-To header"},
		{"403 from a web server", 403, "<html>403 Forbidden</html>"},
		{"403 Forbidden (madmail's federation policy, or any web server)", 403, "Forbidden"},
		{"200 from a web server (a soft 404 page)", 200, "<html>Welcome</html>"},
		{"200 empty (Caddy's unrouted path, or madmail)", 200, ""},
		{"200 OK (madmail, or any web server)", 200, "OK"},
		{"204", 204, ""},
		{"413 from a web server in front (nginx's body limit)", 413, "<html>\r\n<head><title>413 Request Entity Too Large</title></head>"},
		{"400 one of several", 400, "550 5.1.1 <c@a.test>: Recipient address rejected: User unknown (forwarded from x)"},
		{"down", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			var rcv *fakeReceiver
			if tc.status != 0 {
				rcv = e.receiver("mx1.a.test", tc.status, tc.text)
			}
			mta := e.smtp("mx1.a.test")
			mta.reject["c@a.test"] = "550 5.1.1 no such user"
			rs := deliver(e.sender(nil), "a.test", "b@a.test", "c@a.test")
			wantCodes(t, rs, 250, 550)
			if rs[0].Via != ViaSMTP || rs[1].Via != ViaSMTP || rs[1].Enhanced != "5.1.1" {
				t.Errorf("replies %q via %q %q", codes(rs), rs[0].Via, rs[1].Via)
			}
			if rcv != nil && len(rcv.posts()) != 1 {
				t.Errorf("%d POSTs, want 1", len(rcv.posts()))
			}
			txns := mta.transactions()
			if len(txns) != 1 {
				t.Fatalf("%d SMTP transactions", len(txns))
			}
			tx := txns[0]
			if !tx.tls || tx.helo != "mx.us.test" || tx.from != "alice@us.test" || !slices.Equal(tx.rcpts, []string{"b@a.test"}) {
				t.Errorf("transaction %+v", tx)
			}
			if tx.data != testBody+".\r\n" {
				t.Errorf("DATA %q, want the body as posted and the end line", tx.data)
			}
		})
	}
}

// A host that took a message over SMTP after its POST failed is sent
// SMTP only for 30 minutes, then the POST is tried again.
func TestSMTPOnlyMemory(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx1.a.test", 405, "Method not allowed")
	mta := e.smtp("mx1.a.test")
	s := e.sender(nil)
	wantCodes(t, deliver(s, "a.test", "b@a.test"), 250)
	e.clock.add(29 * time.Minute)
	wantCodes(t, deliver(s, "a.test", "b@a.test"), 250)
	if n := len(rcv.posts()); n != 1 {
		t.Fatalf("%d POSTs within 30 minutes, want 1", n)
	}
	e.clock.add(time.Minute)
	wantCodes(t, deliver(s, "a.test", "b@a.test"), 250)
	if n := len(rcv.posts()); n != 2 {
		t.Fatalf("%d POSTs after 30 minutes, want 2", n)
	}
	if n := len(mta.transactions()); n != 3 {
		t.Fatalf("%d SMTP transactions, want 3", n)
	}
}

// A receiver's refusal of one recipient among several, or its "busy,
// try later", sends the message over SMTP once (per-recipient answers, or
// no wait); the host keeps its /mxdeliv: else anyone could downgrade a
// peer by writing to one unknown address, and one busy moment would send
// it half an hour of mail over SMTP.
func TestFallbackOnceKeepsMxdeliv(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		text   string
	}{
		{"one recipient of several refused", 400, "550 5.1.1 <c@a.test>: Recipient address rejected: User unknown (forwarded from x)"},
		{"busy", 503, "451 4.3.2 Too many deliveries in progress, try again later"},
		{"slow down", 429, "451 4.7.1 Too many unknown recipients, try again later"},
		{"a web server's body limit in front", 413, "<html><title>413 Request Entity Too Large</title>"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			rcv := e.receiver("mx1.a.test", tc.status, tc.text)
			mta := e.smtp("mx1.a.test")
			s := e.sender(nil)
			wantCodes(t, deliver(s, "a.test", "b@a.test", "c@a.test"), 250, 250)
			rcv.set(func() { rcv.status, rcv.text = 200, "250 OK" })
			wantCodes(t, deliver(s, "a.test", "b@a.test"), 250)
			if n := len(rcv.posts()); n != 2 {
				t.Errorf("%d POSTs, want 2: the host was remembered as SMTP-only", n)
			}
			if n := len(mta.transactions()); n != 1 {
				t.Errorf("%d SMTP transactions, want 1", n)
			}
		})
	}
}

func TestSMTPOnlyTable(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	m := newSMTPOnly(30*time.Minute, 2, c.now)
	m.mark("a")
	m.mark("b")
	m.mark("c") // full of live entries: not remembered
	if !m.has("a") || !m.has("b") || m.has("c") {
		t.Fatal("wrong entries")
	}
	c.add(30 * time.Minute)
	m.mark("c") // sweeps the expired ones
	if m.has("a") || !m.has("c") || m.len() != 1 {
		t.Fatalf("after expiry: a=%v c=%v len=%d", m.has("a"), m.has("c"), m.len())
	}
}

// MX preference order: mx1 (10) is down on both paths, mx2 (20) takes it.
func TestMXOrder(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx2.a.test", 200, "250 OK")
	wantCodes(t, deliver(e.sender(nil), "a.test", "b@a.test"), 250)
	if len(rcv.posts()) != 1 {
		t.Fatal("second MX not used")
	}
	ts, rep := resolve(context.Background(), e.dns, "a.test")
	if rep != nil || len(ts) != 2 || ts[0].Host != "mx1.a.test" || ts[1].Host != "mx2.a.test" {
		t.Fatalf("targets %+v", ts)
	}
}

func TestDNSAnswers(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("implicit.test", 200, "250 OK")
	s := e.sender(nil)
	r := deliver(s, "null.test", "b@null.test")
	wantCodes(t, r, 556)
	if r[0].Enhanced != "5.1.10" {
		t.Errorf("null MX: %q", r[0])
	}
	wantCodes(t, deliver(s, "nx.test", "b@nx.test"), 550)
	wantCodes(t, deliver(s, "broken.test", "b@broken.test"), 451)
	wantCodes(t, deliver(s, "implicit.test", "b@implicit.test"), 250) // implicit MX
	if len(rcv.posts()) != 1 {
		t.Error("implicit MX not posted to")
	}
	if _, rep := resolve(context.Background(), e.dns, "[IPv6:::1"); rep == nil {
		t.Error("bad literal accepted")
	}
	ts, rep := resolve(context.Background(), e.dns, "[192.0.2.7]")
	if rep != nil || len(ts) != 1 || ts[0].Host != "192.0.2.7" || !ts[0].Literal {
		t.Errorf("literal: %+v %v", ts, rep)
	}
	// Never this host's own networks: loopback, private, link-local (a
	// cloud's metadata service), unspecified, multicast.
	for _, lit := range []string{"[127.0.0.1]", "[10.0.0.5]", "[169.254.169.254]", "[0.0.0.0]", "[IPv6:::1]", "[IPv6:fd00::1]", "[IPv6:fe80::1]", "[224.0.0.1]",
		"[100.100.100.200]", "[192.0.0.192]", "[198.18.0.1]", "[240.0.0.1]", "[0.1.2.3]", "[IPv6:64:ff9b::a00:5]", "[IPv6:::127.0.0.1]", "[IPv6:2002:a00:5::1]", "[IPv6:fec0::1]"} {
		if r := deliver(s, lit, "b@"+lit); r[0].Code != 550 || r[0].Enhanced != "5.1.2" {
			t.Errorf("%s: %q", lit, r[0])
		}
	}
}

// Nothing is acknowledged before a peer acknowledged: a receiver that
// reads the body and drops the connection, then an SMTP server that reads
// DATA and drops it, leave the recipient to be retried.
func TestNoAckBeforePeer(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	rcv.abort = true
	mta := e.smtp("mx1.a.test")
	mta.dropAfterData = true
	rs := deliver(e.sender(nil), "a.test", "b@a.test")
	wantCodes(t, rs, 451)
	if len(rcv.posts()) != 1 {
		t.Error("the receiver did not read the body")
	}
	// A 4xx at the end of DATA is the peer's and is passed on.
	mta.set(func() { mta.dropAfterData, mta.final = false, "451 4.3.0 try later" })
	rcv.set(func() { rcv.abort, rcv.status, rcv.text = false, 503, "busy" })
	rs = deliver(e.sender(nil), "a.test", "b@a.test")
	wantCodes(t, rs, 451)
	if rs[0].Via != ViaSMTP {
		t.Errorf("via %q", rs[0].Via)
	}
}

// Strict TLS: a certificate we do not trust fails both paths (451 4.7.5),
// unless the domain is configured as a test domain.
func TestStrictTLS(t *testing.T) {
	e := newTestEnv(t)
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	e.smtp("mx1.a.test")
	untrusting := e.sender(func(c *Config) { c.RootCAs = x509.NewCertPool() })
	rs := deliver(untrusting, "a.test", "b@a.test")
	wantCodes(t, rs, 451)
	if rs[0].Enhanced != "4.7.5" {
		t.Errorf("reply %q", rs[0])
	}
	if len(rcv.posts()) != 0 {
		t.Error("posted over unverified TLS")
	}
	relaxed := e.sender(func(c *Config) { c.RootCAs = x509.NewCertPool(); c.InsecureTLSDomains = []string{"A.test"} })
	wantCodes(t, deliver(relaxed, "a.test", "b@a.test"), 250)
}

// A mail server without STARTTLS is not used.
func TestSTARTTLSRequired(t *testing.T) {
	e := newTestEnv(t)
	mta := e.smtp("mx1.a.test")
	mta.noTLS = true
	rs := deliver(e.sender(nil), "a.test", "b@a.test")
	wantCodes(t, rs, 451)
	if rs[0].Enhanced != "4.7.5" || len(mta.transactions()) != 0 {
		t.Errorf("reply %q, %d transactions", rs[0], len(mta.transactions()))
	}
}

// The destination limit defers what does not get a slot in time.
func TestDestinationLimit(t *testing.T) {
	var d destLimiter
	d.n = 1
	rel, ok := d.acquire(context.Background(), "a.test", time.Second)
	if !ok {
		t.Fatal("first slot refused")
	}
	if _, ok := d.acquire(context.Background(), "a.test", 20*time.Millisecond); ok {
		t.Fatal("second slot granted")
	}
	rel2, ok := d.acquire(context.Background(), "b.test", time.Second)
	if !ok {
		t.Fatal("other destination refused")
	}
	rel()
	rel2()
	if len(d.m) != 0 {
		t.Errorf("%d destinations left", len(d.m))
	}
}

func TestParseReplyLine(t *testing.T) {
	for in, want := range map[string]string{
		"250 OK":                            "250 2.0.0 OK",
		"550 5.1.1 no such user":            "550 5.1.1 no such user",
		"550 4.1.1 class mismatch":          "550 5.0.0 4.1.1 class mismatch",
		"451":                               "451 4.0.0 (no text)",
		"523 Encryption Needed: x\x00y\xff": "523 5.0.0 Encryption Needed: x?y?",
	} {
		r, ok := parseReplyLine(in)
		if !ok || r.String() != want {
			t.Errorf("%q: %q %v, want %q", in, r.String(), ok, want)
		}
	}
	for _, in := range []string{"", "25", "350 go", "600 x", "2500 x", "abc", "1xx"} {
		if _, ok := parseReplyLine(in); ok {
			t.Errorf("%q accepted", in)
		}
	}
	if strings.Contains(replyNullMX.String(), "\n") {
		t.Fatal("reply with a line break")
	}
}

// The series register and count a delivery by path and result.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	e := newTestEnv(t)
	e.receiver("mx1.a.test", 200, "250 OK")
	s := e.sender(nil)
	s.m = m
	deliver(s, "a.test", "b@a.test", "c@a.test")
	if got := counter(t, reg, "chatmail_mxdeliv_recipients_total", "delivered", "https"); got != 2 {
		t.Fatalf("delivered over https: %v", got)
	}
	if got := counter(t, reg, "chatmail_mxdeliv_post_answers_total", "delivered"); got != 1 {
		t.Fatalf("posts delivered: %v", got)
	}
}

// counter returns the value of the series of name with the label values
// (in the order of the label names, sorted).
func counter(t *testing.T, reg *prometheus.Registry, name string, values ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var got []string
			for _, l := range m.GetLabel() {
				got = append(got, l.GetValue())
			}
			if slices.Equal(got, values) {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no series %s%v", name, values)
	return 0
}

// A peer's reply that is no result (a 3xx where a command ends, a 2xx to
// DATA) makes the host unusable, not a reply: passed on, a 3xx line would
// not parse at Postfix, which then shifts every later recipient's reply
// onto the one before; a 250 to DATA acknowledges a body never sent. The
// next mail server gets the message.
func TestSMTPNoResultReplies(t *testing.T) {
	for _, tc := range []struct {
		name string
		bad  func(*fakeSMTP)
	}{
		{"354 to RCPT", func(f *fakeSMTP) { f.reject["b@a.test"] = "354 go ahead" }},
		{"250 to DATA", func(f *fakeSMTP) { f.dataReply = "250 2.0.0 fine" }},
		{"354 at the end of DATA", func(f *fakeSMTP) { f.final = "354 more" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t)
			bad, good := e.smtp("mx1.a.test"), e.smtp("mx2.a.test")
			tc.bad(bad)
			rs := deliver(e.sender(nil), "a.test", "x@a.test", "b@a.test", "y@a.test")
			wantCodes(t, rs, 250, 250, 250)
			if n := len(good.transactions()); n != 1 {
				t.Fatalf("the next mail server got %d transactions, want 1", n)
			}
			if got := good.transactions()[0].rcpts; !slices.Equal(got, []string{"x@a.test", "b@a.test", "y@a.test"}) {
				t.Errorf("the next mail server got %q", got)
			}
		})
	}
}

// An IP address is no domain, and an MX record that names an address
// instead of a host is skipped (as Postfix does): neither reaches the
// resolver's shortcut to loopback or a cloud's metadata service.
func TestNumericNames(t *testing.T) {
	e := newTestEnv(t)
	e.dns.mx["numeric.test"] = []*net.MX{{Host: "10.0.0.5.", Pref: 5}, {Host: "mx1.a.test.", Pref: 10}}
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	s := e.sender(nil)
	for _, d := range []string{"169.254.169.254", "127.0.0.1", "::1"} {
		if r := deliver(s, d, "b@"+d); r[0].Code != 550 {
			t.Errorf("%s: %q", d, r[0])
		}
	}
	ts, rep := resolve(context.Background(), e.dns, "numeric.test")
	if rep != nil || len(ts) != 1 || ts[0].Host != "mx1.a.test" {
		t.Errorf("numeric MX: %+v %v", ts, rep)
	}
	wantCodes(t, deliver(s, "numeric.test", "b@numeric.test"), 250)
	if len(rcv.posts()) != 1 {
		t.Error("not delivered to the named MX")
	}
}

// An internationalized recipient domain is looked up and its mail server
// verified in the ASCII form, and the message goes there: it is not
// bounced as a domain that does not exist.
func TestIDNDomain(t *testing.T) {
	e := newTestEnv(t)
	e.dns.mx["xn--bcher-kva.test"] = []*net.MX{{Host: "mx1.a.test.", Pref: 10}}
	rcv := e.receiver("mx1.a.test", 200, "250 OK")
	rs := deliver(e.sender(nil), "bücher.test", "leser@bücher.test")
	wantCodes(t, rs, 250)
	if ps := rcv.posts(); len(ps) != 1 || ps[0].to[0] != "leser@bücher.test" {
		t.Errorf("posted %+v", ps)
	}
	wantCodes(t, deliver(e.sender(nil), "b\u00fccher\u0000.test", "x@b\u00fccher\u0000.test"), 550)
	// ASCII names are looked up as they are, whatever the IDNA rules
	// say of them; Unicode ones map as UTS 46 alone maps them.
	for in, want := range map[string]string{"my_host.example": "my_host.example", "ab--cd.example": "ab--cd.example", "STRA\u1E9EE.test": "strasse.test", "B\u00dcCHER.test": "xn--bcher-kva.test"} {
		if got, ok := asciiDomain(lowerASCII(in)); !ok || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, ok, want)
		}
	}
}
