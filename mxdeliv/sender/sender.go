package sender

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"chatmail.dev/sidecar/logging"
)

// Config is what the daemon sets; New fills in zero fields with the
// defaults named on each.
type Config struct {
	// Hostname is our name in EHLO (the mail_domain's MX name); required.
	Hostname string
	// Resolver looks up MX and address records; nil means
	// net.DefaultResolver.
	Resolver Resolver
	// RootCAs verifies peers' certificates; nil means the system roots.
	RootCAs *x509.CertPool
	// InsecureTLSDomains are recipient domains whose mail servers'
	// certificates are not verified, over HTTPS and SMTP alike (test
	// setups with self-signed certificates). Domain literals
	// ([192.0.2.1]) are never verified: there is no name to verify.
	InsecureTLSDomains []string
	// HTTPSPort is the port of /mxdeliv; default 443.
	HTTPSPort int
	// SMTPPort is the port of the SMTP fallback; default 25.
	SMTPPort int
	// ConnectTimeout bounds a TCP connect and a TLS handshake; default 30s.
	ConnectTimeout time.Duration
	// HTTPTimeout bounds one POST, body and answer included; default 60s.
	HTTPTimeout time.Duration
	// CommandTimeout bounds each SMTP command and its reply; default 2m.
	CommandTimeout time.Duration
	// DataTimeout bounds sending the body over SMTP and the reply to it;
	// default 5m.
	DataTimeout time.Duration
	// DeliveryTimeout bounds the delivery to one domain, every mail server
	// and both paths included; default 8m. Postfix's
	// lmtp_data_done_timeout must be longer.
	DeliveryTimeout time.Duration
	// SMTPOnlyTTL is how long a host that took a message over SMTP after
	// its POST failed is sent SMTP only; default 30m, negative disables.
	SMTPOnlyTTL time.Duration
	// SMTPOnlyMax bounds the hosts remembered; default 10000.
	SMTPOnlyMax int
	// DestinationConcurrency bounds the deliveries in progress to one
	// recipient domain; default 20.
	DestinationConcurrency int
	// QueueTimeout is how long a delivery waits for a free slot of its
	// destination before it fails temporarily; default 30s.
	QueueTimeout time.Duration

	// UnreachableTTL is how long an address whose connect timed out (in
	// at least a fifth of ConnectTimeout) is not dialed again (the delivery fails temporarily at once); default
	// 5m, which Postfix's first retry outlasts.
	UnreachableTTL time.Duration
	// UnreachableMax bounds the addresses remembered; default 10000.
	UnreachableMax int

	// Dial connects; nil means a net.Dialer that skips the addresses
	// remembered as unreachable. Tests send every host to their own
	// listeners with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Now is the clock of the SMTP-only memory; nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	defInt(&c.HTTPSPort, 443)
	defInt(&c.SMTPPort, 25)
	def(&c.ConnectTimeout, 30*time.Second)
	def(&c.HTTPTimeout, 60*time.Second)
	def(&c.CommandTimeout, 2*time.Minute)
	def(&c.DataTimeout, 5*time.Minute)
	def(&c.DeliveryTimeout, 8*time.Minute)
	def(&c.SMTPOnlyTTL, 30*time.Minute)
	defInt(&c.SMTPOnlyMax, 10000)
	defInt(&c.DestinationConcurrency, 20)
	def(&c.QueueTimeout, 30*time.Second)
	def(&c.UnreachableTTL, 5*time.Minute)
	defInt(&c.UnreachableMax, 10000)
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Envelope is one delivery to the recipients of one domain.
type Envelope struct {
	// From is the sender, a bare address; "" is the null sender.
	From string
	// To are the recipients, bare addresses, all of the same domain.
	To []string
	// EightBit asks for BODY=8BITMIME over SMTP, as the client asked us.
	EightBit bool
}

// Sender delivers messages to other mail servers, /mxdeliv first. It is
// safe for concurrent use.
type Sender struct {
	cfg      Config
	log      *slog.Logger
	m        *Metrics
	strict   *http.Client
	insecure *http.Client
	smtpOnly *smtpOnly
	dests    destLimiter
}

// New returns a Sender. log and m may be nil.
func New(cfg Config, log *slog.Logger, m *Metrics) (*Sender, error) {
	if cfg.Hostname == "" || strings.ContainsAny(cfg.Hostname, " \r\n") {
		return nil, errors.New("sender: hostname is required")
	}
	cfg.setDefaults()
	for i, d := range cfg.InsecureTLSDomains {
		cfg.InsecureTLSDomains[i] = strings.ToLower(d)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sender{cfg: cfg, log: log, m: m,
		smtpOnly: newSMTPOnly(cfg.SMTPOnlyTTL, cfg.SMTPOnlyMax, cfg.Now),
		dests:    destLimiter{n: cfg.DestinationConcurrency},
	}
	if s.cfg.Dial == nil {
		down := newUnreachable(cfg.UnreachableTTL, cfg.UnreachableMax, cfg.Now)
		// A fifth of the connect timeout (6 s by default) is time enough
		// for any reachable host; less proves nothing.
		s.cfg.Dial = down.dialer(s.cfg.Resolver.LookupHost, s.cfg.ConnectTimeout/5, func() { m.unreachable(down.len()) })
	}
	s.strict = s.httpClient(false)
	s.insecure = s.httpClient(true)
	return s, nil
}

// httpClient returns a client that keeps connections to busy peers open
// (HTTP/2 where offered, else keep-alive) and never follows redirects.
func (s *Sender) httpClient(insecure bool) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
			defer cancel()
			return s.cfg.Dial(ctx, network, addr)
		},
		TLSClientConfig:       s.tlsConfig("", insecure),
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   s.cfg.ConnectTimeout,
		ResponseHeaderTimeout: s.cfg.HTTPTimeout,
		MaxIdleConnsPerHost:   4,
		MaxConnsPerHost:       s.cfg.DestinationConcurrency,
		IdleConnTimeout:       90 * time.Second,
		// The receivers answer a short line; a peer must not make a
		// POST hold megabytes of header.
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (s *Sender) tlsConfig(serverName string, insecure bool) *tls.Config {
	return &tls.Config{
		ServerName:         serverName,
		RootCAs:            s.cfg.RootCAs,
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: insecure, //nolint:gosec // only domain literals and configured test domains
	}
}

func (s *Sender) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return s.cfg.Dial(ctx, network, addr)
}

// Deliver delivers body to env's recipients, all of domain, and returns
// one reply per recipient in env.To's order. A 2xx reply is given only
// after a peer acknowledged the message for that recipient.
func (s *Sender) Deliver(ctx context.Context, domain string, env Envelope, body *Body) []Reply {
	start := time.Now()
	domain = lowerASCII(strings.TrimSuffix(domain, "."))
	replies := s.deliver(ctx, domain, env, body)
	s.m.delivered(replies, time.Since(start))
	for i, r := range replies {
		if !r.OK() {
			s.log.Info("mxdeliv: delivery failed", logging.Addr(env.To[i]), "via", string(r.Via), "reply", r.Code, "status", r.Enhanced)
		} else {
			s.log.Debug("mxdeliv: delivered", logging.Addr(env.To[i]), "via", string(r.Via))
		}
	}
	return replies
}

func all(n int, r Reply) []Reply {
	out := make([]Reply, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func (s *Sender) deliver(ctx context.Context, domain string, env Envelope, body *Body) []Reply {
	n := len(env.To)
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DeliveryTimeout)
	defer cancel()
	release, ok := s.dests.acquire(ctx, domain, s.cfg.QueueTimeout)
	if !ok {
		s.m.busy()
		return all(n, replyBusy)
	}
	defer release()

	targets, rep := resolve(ctx, s.cfg.Resolver, domain)
	if rep != nil {
		return all(n, *rep)
	}
	insecure := slices.Contains(s.cfg.InsecureTLSDomains, domain)
	tlsFailed := false
	for _, t := range targets {
		if ctx.Err() != nil {
			break
		}
		posted := false
		if !s.smtpOnly.has(t.Host) {
			posted = true
			out, r, err := s.post(ctx, t, insecure || t.Literal, env, body)
			s.m.posted(out)
			if out == outDelivered || out == outFinal {
				return all(n, r)
			}
			posted = out == outFallback
			s.log.Debug("mxdeliv: POST unusable, trying SMTP", logging.Addr(t.Host), "cause", errKind(err))
		}
		serverName := t.Host
		if t.Literal {
			serverName = ""
		}
		replies, err := s.deliverSMTP(ctx, smtpJob{
			t:     t,
			tls:   s.tlsConfig(serverName, insecure || t.Literal),
			from:  env.From,
			rcpts: env.To,
			body:  body,

			eightBit: env.EightBit,
		})
		s.m.smtpSession(err)
		if err != nil {
			if k := errKind(err); k == "tls" || k == "no-starttls" {
				tlsFailed = true
			}
			s.log.Info("mxdeliv: mail server unusable", logging.Addr(t.Host), "cause", errKind(err))
			continue
		}
		if posted && slices.ContainsFunc(replies, Reply.OK) {
			s.smtpOnly.mark(t.Host)
			s.m.smtpOnlyHosts(s.smtpOnly.len())
		}
		return replies
	}
	if tlsFailed {
		// Say so: an admin who reads the bounce should look at TLS.
		return all(n, replyInterruptedTLS)
	}
	return all(n, replyUnreachable)
}

// post sends the message to https://host/mxdeliv and classifies the
// answer; err is the transport error behind an outFallback, if any.
func (s *Sender) post(ctx context.Context, t target, insecure bool, env Envelope, body *Body) (outcome, Reply, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HTTPTimeout)
	defer cancel()
	host := t.Host
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if s.cfg.HTTPSPort != 443 {
		host = net.JoinHostPort(t.Host, strconv.Itoa(s.cfg.HTTPSPort))
	}
	u := url.URL{Scheme: "https", Host: host, Path: "/mxdeliv"}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), body.Reader())
	if err != nil {
		return outFallback, Reply{}, err
	}
	req.ContentLength = body.Size()
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(body.Reader()), nil }
	req.Header.Set("X-Mail-From", env.From)
	for _, rc := range env.To {
		req.Header.Add("X-Mail-To", rc)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	c := s.strict
	if insecure {
		c = s.insecure
	}
	resp, err := c.Do(req)
	if err != nil {
		return outFallback, Reply{}, err
	}
	defer func() { _ = resp.Body.Close() }() // the answer is read; closing cannot change it
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBody))
	if err != nil && resp.StatusCode/100 != 2 {
		// The status of a 2xx acknowledges by itself; anything else
		// needs its text.
		return outFallback, Reply{}, err
	}
	// Drain a little so the connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, maxAnswerBody)
	out, r := classifyAnswer(resp.StatusCode, b, len(env.To))
	return out, r, nil
}

// errKind names the class of a delivery error for logs: the error texts
// carry host names and addresses of peers, and errors name no one.
func errKind(err error) string {
	var ne net.Error
	var de *net.DNSError
	var ve *tls.CertificateVerificationError
	var ae *net.OpError
	var rh tls.RecordHeaderError
	switch {
	case err == nil:
		return "answer"
	case errors.Is(err, errNoSTARTTLS):
		return "no-starttls"
	case errors.As(err, &ve), errors.As(err, &rh), strings.HasPrefix(err.Error(), "TLS:"):
		return "tls"
	case errors.Is(err, errProtocol):
		return "protocol"
	case errors.As(err, &de):
		return "dns"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &ae) && ae.Op == "dial":
		return "connect"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "closed"
	}
	return "other"
}

// destLimiter bounds the deliveries in progress per destination.
type destLimiter struct {
	n  int
	mu sync.Mutex
	m  map[string]*destSlots
}

type destSlots struct {
	ch   chan struct{}
	refs int
}

// acquire waits up to wait for a slot of key; release gives it back.
func (d *destLimiter) acquire(ctx context.Context, key string, wait time.Duration) (release func(), ok bool) {
	d.mu.Lock()
	if d.m == nil {
		d.m = map[string]*destSlots{}
	}
	ds := d.m[key]
	if ds == nil {
		ds = &destSlots{ch: make(chan struct{}, d.n)}
		d.m[key] = ds
	}
	ds.refs++
	d.mu.Unlock()
	unref := func() {
		d.mu.Lock()
		if ds.refs--; ds.refs == 0 {
			delete(d.m, key)
		}
		d.mu.Unlock()
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case ds.ch <- struct{}{}:
		return func() { <-ds.ch; unref() }, true
	case <-ctx.Done():
	case <-t.C:
	}
	unref()
	return nil, false
}
