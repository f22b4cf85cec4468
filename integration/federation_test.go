package integration

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// TestFederation: two stacks, each in a network namespace of its own,
// exchange mail over SMTP as two chatmail servers on the Internet do: by
// the DNS's MX records, over TLS verified against the test CA, DKIM-signed
// by the sender's server and verified by the receiver's with the key from
// the DNS. A user of A and a user of B meet by SecureJoin and exchange
// messages and a 1 MB file; cleartext from A to B stops at A.
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

	content := make([]byte, 1<<20)
	rand.Read(content)
	path := filepath.Join(t.TempDir(), "upload.bin")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	fileName := "across-" + rand.Text()[:6] + ".bin"
	text := secret("a file from A")
	send(t, alice, aliceChat, deltachat.MessageData{Text: text, File: path, FileName: fileName, ViewType: "File"})
	msg := receive(t, bob, alice, bobChat, text)
	got, err := os.ReadFile(msg.File)
	if err != nil {
		t.Fatalf("Bob's copy of the file: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(content) || msg.FileName != fileName {
		t.Errorf("Bob got %q, %d bytes with SHA-256 %x; want %q, %d bytes with %x",
			msg.FileName, len(got), sha256.Sum256(got), fileName, len(content), sha256.Sum256(content))
	}
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
