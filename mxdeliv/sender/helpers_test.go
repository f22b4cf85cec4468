package sender

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// testCert is a self-signed certificate for the mail servers of the tests.
func testCert(t *testing.T, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mxdeliv test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		DNSNames:              names,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

// fakeDNS answers MX and address lookups from maps; anything else does
// not exist. errs makes a name fail with a temporary error.
type fakeDNS struct {
	mx    map[string][]*net.MX
	hosts map[string]bool
	errs  map[string]bool
}

func (f *fakeDNS) LookupMX(_ context.Context, name string) ([]*net.MX, error) {
	if f.errs[name] {
		return nil, &net.DNSError{Err: "server misbehaving", Name: name, IsTemporary: true}
	}
	if mx, ok := f.mx[name]; ok {
		return mx, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (f *fakeDNS) LookupHost(_ context.Context, name string) ([]string, error) {
	if f.hosts[name] {
		return []string{"192.0.2.1"}, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

// router sends host:port to test listeners; every other address refuses.
type router struct {
	mu     sync.Mutex
	routes map[string]string
}

func (r *router) add(from, to string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.routes == nil {
		r.routes = map[string]string{}
	}
	r.routes[from] = to
}

func (r *router) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	r.mu.Lock()
	to, ok := r.routes[addr]
	r.mu.Unlock()
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, to)
}

// posted is one request a fake receiver got.
type posted struct {
	from string
	to   []string
	body string
}

// fakeReceiver is an HTTPS /mxdeliv receiver answering status and text.
type fakeReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []posted
	status int
	text   string
	// abort drops the connection after reading the body, without answer.
	abort bool
}

func newReceiver(t *testing.T, cert tls.Certificate, status int, text string) *fakeReceiver {
	f := &fakeReceiver{status: status, text: text}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		f.mu.Lock()
		f.got = append(f.got, posted{from: r.Header.Get("X-Mail-From"), to: r.Header.Values("X-Mail-To"), body: string(b)})
		status, text, abort := f.status, f.text, f.abort
		f.mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != "/mxdeliv" {
			status, text = 404, "not here"
		}
		if abort {
			panic(http.ErrAbortHandler)
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, text)
	}))
	f.srv.EnableHTTP2 = true
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeReceiver) posts() []posted {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]posted(nil), f.got...)
}

func (f *fakeReceiver) addr() string { return f.srv.Listener.Addr().String() }

// smtpTxn is one transaction a fake SMTP server got.
type smtpTxn struct {
	helo  string
	from  string
	rcpts []string
	data  string // the raw DATA bytes, final "." line included
	tls   bool
}

// fakeSMTP is a tiny SMTP server with STARTTLS that records transactions.
type fakeSMTP struct {
	ln     net.Listener
	cert   tls.Certificate
	noTLS  bool
	reject map[string]string // recipient -> reply line
	final  string            // reply to the end of DATA; "" is 250
	// dropAfterData closes the connection after reading the body.
	dropAfterData bool
	// dataReply, if set, answers DATA instead of 354 (no body follows).
	dataReply string

	mu   sync.Mutex
	txns []smtpTxn
	wg   sync.WaitGroup
}

func newSMTP(t *testing.T, cert tls.Certificate) *fakeSMTP {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSMTP{ln: ln, cert: cert, reject: map[string]string{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); f.wg.Wait() })
	return f
}

// set changes the server's behaviour under its lock.
func (f *fakeSMTP) set(change func()) { f.mu.Lock(); change(); f.mu.Unlock() }

// set changes the receiver's behaviour under its lock.
func (f *fakeReceiver) set(change func()) { f.mu.Lock(); change(); f.mu.Unlock() }

func (f *fakeSMTP) addr() string { return f.ln.Addr().String() }

func (f *fakeSMTP) transactions() []smtpTxn {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]smtpTxn(nil), f.txns...)
}

func (f *fakeSMTP) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r, w := bufio.NewReader(c), bufio.NewWriter(c)
	say := func(s string) { w.WriteString(s + "\r\n"); w.Flush() }
	say("220 fake ESMTP")
	var txn smtpTxn
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		verb, arg, _ := strings.Cut(line, " ")
		switch strings.ToUpper(verb) {
		case "EHLO":
			txn.helo = arg
			if !f.noTLS && !txn.tls {
				say("250-fake\r\n250-8BITMIME\r\n250-SIZE 1000000\r\n250 STARTTLS")
			} else {
				say("250-fake\r\n250-8BITMIME\r\n250 SIZE 1000000")
			}
		case "STARTTLS":
			say("220 go ahead")
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{f.cert}})
			if tc.Handshake() != nil {
				return
			}
			c, r, w = tc, bufio.NewReader(tc), bufio.NewWriter(tc)
			txn.tls = true
		case "MAIL":
			txn.from = strings.TrimSuffix(strings.TrimPrefix(strings.Fields(arg)[0], "FROM:<"), ">")
			say("250 2.1.0 ok")
		case "RCPT":
			rc := strings.TrimSuffix(strings.TrimPrefix(arg, "TO:<"), ">")
			if rep, ok := f.reject[rc]; ok {
				say(rep)
				continue
			}
			txn.rcpts = append(txn.rcpts, rc)
			say("250 2.1.5 ok")
		case "DATA":
			f.mu.Lock()
			dataReply := f.dataReply
			f.mu.Unlock()
			if dataReply != "" {
				say(dataReply)
				continue
			}
			say("354 go")
			var b strings.Builder
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				b.WriteString(l)
				if l == ".\r\n" {
					break
				}
			}
			txn.data = b.String()
			f.mu.Lock()
			drop, final := f.dropAfterData, f.final
			if !drop {
				f.txns = append(f.txns, txn)
			}
			f.mu.Unlock()
			if drop {
				return
			}
			if final == "" {
				final = "250 2.0.0 queued"
			}
			say(final)
			txn = smtpTxn{helo: txn.helo, tls: txn.tls}
		case "QUIT":
			say("221 bye")
			return
		default:
			say("500 what")
		}
	}
}
