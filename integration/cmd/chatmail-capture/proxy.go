package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// captured is one message as a client submitted it, before any server
// touched it.
type captured struct {
	Seq   int
	User  string // the SMTP login, the sender's address
	From  string // MAIL FROM
	Rcpts []string
	Data  []byte
}

// proxy is an SMTP submission server (implicit TLS, AUTH PLAIN) that
// records every message and passes it on, with the client's own
// credentials, to the stack's submission port. Its answer is the stack's.
type proxy struct {
	upstream string // host:port of the stack's submission port (STARTTLS)
	srv      *smtp.Server
	ln       net.Listener

	mu   sync.Mutex
	msgs []captured
	wake chan struct{} // closed and replaced on every new message
}

func startProxy(upstream string) (*proxy, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, err
	}
	p := &proxy{upstream: upstream, ln: ln, wake: make(chan struct{})}
	p.srv = smtp.NewServer(p)
	p.srv.Domain = "capture.localhost"
	p.srv.MaxMessageBytes = 64 << 20
	p.srv.MaxLineLength = 0 // what the client sends is the point
	p.srv.ReadTimeout = 5 * time.Minute
	p.srv.WriteTimeout = 5 * time.Minute
	go p.srv.Serve(ln)
	return p, nil
}

func (p *proxy) port() uint16 { return uint16(p.ln.Addr().(*net.TCPAddr).Port) }

func (p *proxy) close() error { return p.srv.Close() }

// count returns how many messages have been captured so far.
func (p *proxy) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.msgs)
}

// since returns the messages captured from index i on.
func (p *proxy) since(i int) []captured {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]captured(nil), p.msgs[i:]...)
}

// changed returns a channel that is closed when the next message arrives.
func (p *proxy) changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wake
}

func (p *proxy) record(c captured) {
	p.mu.Lock()
	defer p.mu.Unlock()
	c.Seq = len(p.msgs)
	p.msgs = append(p.msgs, c)
	close(p.wake)
	p.wake = make(chan struct{})
}

// NewSession implements smtp.Backend.
func (p *proxy) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{p: p}, nil }

type session struct {
	p          *proxy
	user, pass string
	from       string
	rcpts      []string
}

func (s *session) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *session) Auth(mech string) (sasl.Server, error) {
	if mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		s.user, s.pass = user, pass
		return nil
	}), nil
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	if s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.from = from
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.p.record(captured{User: s.user, From: s.from, Rcpts: append([]string(nil), s.rcpts...), Data: data})
	return s.forward(data)
}

// forward submits data to the stack with the client's credentials and
// returns the stack's refusal as the proxy's own.
func (s *session) forward(data []byte) error {
	c, err := smtp.DialStartTLS(s.p.upstream, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return &smtp.SMTPError{Code: 451, Message: "capture proxy: " + err.Error()}
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", s.user, s.pass)); err != nil {
		return upstreamErr(err)
	}
	if err := c.SendMail(s.from, s.rcpts, bytes.NewReader(data)); err != nil {
		return upstreamErr(err)
	}
	return c.Quit()
}

func upstreamErr(err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return &smtp.SMTPError{Code: 451, Message: fmt.Sprintf("capture proxy: %v", err)}
}

func (s *session) Reset() { s.from, s.rcpts = "", nil }

func (s *session) Logout() error { return nil }

func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "capture.localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"capture.localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
