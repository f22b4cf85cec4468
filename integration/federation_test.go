package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// TestFederation: two stacks, each in a network namespace of its own,
// exchange mail as two chatmail servers on the Internet do: by the DNS's
// MX records, over HTTPS /mxdeliv where chatmail-mxdeliv runs (else SMTP),
// over TLS verified against the test CA, DKIM-signed
// by the sender's server and verified by the receiver's with the key from
// the DNS. A user of A and a user of B meet by SecureJoin and exchange
// messages and a 1 MB file; cleartext from A to B stops at A, and
// cleartext POSTed to B's /mxdeliv is refused with 523.
func TestFederation(t *testing.T) {
	a, b := stack.Federation(t)
	wantFederationDNS(t, a, b)
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, a, "Alice of A")
	bob := newChatter(t, rpc, b, "Bob of B")

	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	aliceChat := alice.oneToOne(t, bobInAlice)
	wantChat(t, alice, aliceChat, "Single")
	wantChat(t, bob, bobChat, "Single")

	hello := secret("hello Bob, from A")
	send(t, alice, aliceChat, deltachat.MessageData{Text: hello})
	receive(t, bob, alice, bobChat, hello)
	reply := secret("hello Alice, from B")
	send(t, bob, bobChat, deltachat.MessageData{Text: reply})
	receive(t, alice, bob, aliceChat, reply)

	text, fileName, _ := sendFile(t, alice, aliceChat, bob, bobChat, "across", "a file from A")
	wantServerBlind(t, b, []*chatter{bob}, []string{hello, text, fileName})
	wantServerBlind(t, a, []*chatter{alice}, []string{reply})

	// Each milter verified the other's DKIM signatures (the header does
	// not reach the mailbox): incoming mail needs an aligned signature,
	// so what arrived was signed by its sender's server, and the key came
	// from the DNS (dnsmasq's log names the query and who asked). Mail
	// from A's domain without A's signature is refused at B.
	dnsLog := filepath.Join(a.Env["NET_DIR"], "log", "dnsmasq.log")
	for _, c := range []struct{ signer, verifier *stack.Stack }{{a, b}, {b, a}} {
		want := "query[TXT] chatmail._domainkey." + c.signer.Domain + " from " + c.verifier.Host()
		if b, err := os.ReadFile(dnsLog); err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: no %q (%v)", dnsLog, want, err)
		}
	}
	unsigned := fixture(t, "enc-v4.eml", alice.Addr, bob.Addr)
	if code, text := smtpCode(deliverMX(b, alice.Addr, bob.Addr, unsigned)); code != 554 || !contains(text, "DKIM") {
		t.Errorf("unsigned mail from A's domain at B's MX: %d %s, want 554 (no DKIM signature)", code, text)
	}

	// Cleartext from A to B: refused at A's submission.
	if code, text := smtpCode(submit(a, alice.Addr, alice.Password, bob.Addr, fixture(t, "neg-plain.eml", alice.Addr, bob.Addr))); code != 523 {
		t.Errorf("cleartext from A to B at A's submission: %d %s, want 523", code, text)
	}

	if a.Env["MXDELIV_ROUTE"] == "on" && b.Env["MXDELIV_ROUTE"] == "on" {
		// Over /mxdeliv: each sender's recipients were delivered over
		// HTTPS (its TLS verified against the test CA: nothing else is
		// trusted) and none over SMTP; each receiver delivered them.
		for _, c := range []struct{ from, to *stack.Stack }{{a, b}, {b, a}} {
			sent := nsMetrics(t, c.from, "MXDELIV_METRICS", "chatmail_mxdeliv_")
			if n := sent[viaHTTPS]; n < 1 {
				t.Errorf("%s's sender delivered %v recipients over /mxdeliv, want some", c.from.Domain, n)
			}
			if n := sent[viaSMTP]; n != 0 {
				t.Errorf("%s's sender delivered %v recipients over SMTP, want none", c.from.Domain, n)
			}
			got := nsMetrics(t, c.to, "MXDELIV_METRICS", "chatmail_mxdeliv_")
			if n := got["chatmail_mxdeliv_delivered_recipients_total"]; n < 1 {
				t.Errorf("%s's receiver delivered %v recipients, want some", c.to.Domain, n)
			}
		}
		wantCleartextRefusedOverMxdeliv(t, b, alice.Addr, bob.Addr)
		return
	}
	// Each Postfix verified the other's certificate against the test CA.
	for _, c := range []struct{ from, to *stack.Stack }{{a, b}, {b, a}} {
		want := "Verified TLS connection established to mx." + c.to.Domain
		eventually(t, 10*time.Second, func() error {
			if !strings.Contains(c.from.Log(t, "mail.log"), want) {
				return fmt.Errorf("%s's mail.log lacks %q", c.from.Domain, want)
			}
			return nil
		})
	}
}

// The sender's series of recipients delivered, by path.
const (
	viaHTTPS = `chatmail_mxdeliv_recipients_total{result="delivered",via="https"}`
	viaSMTP  = `chatmail_mxdeliv_recipients_total{result="delivered",via="smtp"}`
)

// TestFederationSMTPFallback: with B's chatmail-mxdeliv stopped, A's
// sender finds no /mxdeliv at B and delivers over SMTP to B's Postfix in
// the same attempt (STARTTLS, verified against the test CA); B's own
// outgoing mail waits in B's queue until its sender is back.
func TestFederationSMTPFallback(t *testing.T) {
	a, b := stack.Federation(t)
	if a.Env["MXDELIV_ROUTE"] != "on" || b.Env["MXDELIV_ROUTE"] != "on" {
		t.Fatal("the stacks do not route outgoing mail through chatmail-mxdeliv (no MXDELIV_ROUTE=on in stack.env)")
	}
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, a, "Alice of A")
	bob := newChatter(t, rpc, b, "Bob of B")
	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	aliceChat := alice.oneToOne(t, bobInAlice)

	b.Run(t, "stop", "mxdeliv")
	before := nsMetrics(t, a, "MXDELIV_METRICS", "chatmail_mxdeliv_")
	hello := secret("hello Bob, over SMTP")
	send(t, alice, aliceChat, deltachat.MessageData{Text: hello})
	receive(t, bob, alice, bobChat, hello)

	text, fileName, _ := sendFile(t, alice, aliceChat, bob, bobChat, "fallback", "a file from A, over SMTP")
	after := nsMetrics(t, a, "MXDELIV_METRICS", "chatmail_mxdeliv_")
	if d := after[viaSMTP] - before[viaSMTP]; d < 2 {
		t.Errorf("A's sender delivered %v recipients over SMTP while B's /mxdeliv was down, want 2 or more", d)
	}
	if d := after[viaHTTPS] - before[viaHTTPS]; d != 0 {
		t.Errorf("A's sender delivered %v recipients over /mxdeliv while B's was down", d)
	}
	if !strings.Contains(b.Log(t, "mail.log"), "from mx."+a.Domain) {
		t.Errorf("B's mail.log names no SMTP connection from mx.%s", a.Domain)
	}
	wantServerBlind(t, b, []*chatter{bob}, []string{hello, text, fileName})

	// B's reply: its sender is down, so Postfix keeps it; back up, the
	// queue flushed, it arrives over /mxdeliv (A's is up).
	reply := secret("hello Alice, after the outage")
	send(t, bob, bobChat, deltachat.MessageData{Text: reply})
	b.Run(t, "start", "mxdeliv")
	if out, err := b.Command("postqueue", "-c", b.Env["POSTFIX_CONFIG_DIR"], "-f").CombinedOutput(); err != nil {
		t.Fatalf("postqueue -f at B: %v\n%s", err, out)
	}
	receive(t, alice, bob, aliceChat, reply)
	if n := nsMetrics(t, b, "MXDELIV_METRICS", "chatmail_mxdeliv_")[viaHTTPS]; n < 1 {
		t.Errorf("B's restarted sender delivered %v recipients over /mxdeliv, want some", n)
	}
}

// wantCleartextRefusedOverMxdeliv POSTs a cleartext message straight to
// s's /mxdeliv, as another server's sender would (from the root
// namespace, trusting the test CA): 400 with the 523 reply.
func wantCleartextRefusedOverMxdeliv(t *testing.T, s *stack.Stack, from, to string) {
	t.Helper()
	pem, err := os.ReadFile(s.Env["FED_CA_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", s.Env["FED_CA_FILE"])
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	defer client.CloseIdleConnections()
	body := strings.ReplaceAll(fixture(t, "neg-plain.eml", from, to), "\r\n", "\n")
	body = strings.ReplaceAll(body, "\n", "\r\n")
	req, err := http.NewRequest(http.MethodPost, s.Env["MXDELIV_URL"], strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Mail-From", from)
	req.Header.Set("X-Mail-To", to)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", s.Env["MXDELIV_URL"], err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(string(answer), "523 ") {
		t.Errorf("cleartext POSTed to %s's /mxdeliv: %d %q, want 400 \"523 ...\"", s.Domain, resp.StatusCode, answer)
	}
}

// nsMetrics reads the series of a daemon's metrics listener (stack.env's
// key, on the stack's own loopback: in its network namespace) whose names
// start with prefix.
func nsMetrics(t *testing.T, s *stack.Stack, key, prefix string) map[string]float64 {
	t.Helper()
	_, port, err := net.SplitHostPort(s.Env[key])
	if err != nil {
		t.Fatalf("%s: %v", key, err)
	}
	script := "exec 3<>/dev/tcp/127.0.0.1/" + port + " && printf 'GET /metrics HTTP/1.0\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && cat <&3"
	out, err := exec.Command("ip", "netns", "exec", s.Env["NETNS"], "bash", "-c", script).Output()
	if err != nil {
		t.Fatalf("metrics of %s (%s): %v", s.Domain, key, err)
	}
	_, text, ok := strings.Cut(string(out), "\r\n\r\n")
	if !ok {
		t.Fatalf("metrics of %s: no HTTP answer: %q", s.Domain, out)
	}
	m := map[string]float64{}
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i < 0 || err != nil {
			t.Fatalf("metrics line %q", line)
		}
		m[line[:i]] = v
	}
	return m
}

// wantFederationDNS checks what the federation's DNS server answers: the MX
// and A records and the DKIM key of both domains, and nothing else (it
// forwards nowhere).
func wantFederationDNS(t *testing.T, stacks ...*stack.Stack) {
	t.Helper()
	server := net.JoinHostPort(stacks[0].Env["DNS_SERVER"], "53")
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, s := range stacks {
		mx, err := r.LookupMX(ctx, s.Domain)
		if err != nil || len(mx) != 1 || mx[0].Host != "mx."+s.Domain+"." {
			t.Errorf("MX %s: %v, %v; want mx.%s", s.Domain, mx, err, s.Domain)
		}
		addrs, err := r.LookupHost(ctx, "mx."+s.Domain)
		if err != nil || len(addrs) != 1 || addrs[0] != s.Host() {
			t.Errorf("A mx.%s: %v, %v; want %s", s.Domain, addrs, err, s.Host())
		}
		txt, err := r.LookupTXT(ctx, s.Env["DKIM_SELECTOR"]+"._domainkey."+s.Domain)
		if err != nil || len(txt) != 1 || !strings.HasPrefix(txt[0], "v=DKIM1; k=rsa; p=") {
			t.Errorf("DKIM key of %s: %q, %v", s.Domain, txt, err)
		}
	}
	if addrs, err := r.LookupHost(ctx, "deltachat.net"); err == nil {
		t.Errorf("the federation's DNS answers for deltachat.net: %v", addrs)
	}
}
