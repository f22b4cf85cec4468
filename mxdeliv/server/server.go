// Package server runs chatmail-mxdeliv: the /mxdeliv receiver
// (package receiver) on a plain HTTP listener for the web server in front
// and, optionally, an HTTPS listener of its own, with the account store
// and the milter's mail rules; and, with lmtp_listen, the sender (package
// sender): the LMTP socket Postfix's mxdeliv transport delivers outgoing
// mail to. All listeners drain together on SIGTERM.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"chatmail.dev/mxdeliv/receiver"
	"chatmail.dev/mxdeliv/sender"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/unixsock"
)

// DrainTimeout is the drain budget, from SIGTERM to exit: a request in
// progress is answered within it (request_timeout is kept below).
// The systemd unit's TimeoutStopSec must be above it.
const DrainTimeout = 60 * time.Second

// Run serves /mxdeliv until ctx ends, then drains.
func Run(ctx context.Context, env *daemon.Env, cfg *Config) error {
	pcfg, err := PolicyConfig(env.ConfigPath)
	if err != nil {
		return err
	}
	engine, err := mailpolicy.NewEngine(env.Config, pcfg, env.Log)
	if err != nil {
		return err
	}
	var tlsConf *tls.Config
	if cfg.TLSListen != "" {
		r, err := newCertReloader(cfg.TLSCertFile, cfg.TLSKeyFile, env.Log)
		if err != nil {
			return &config.Error{Key: "mxdeliv.tls_cert_file", Msg: err.Error()}
		}
		tlsConf = &tls.Config{GetCertificate: r.get, MinVersion: tls.VersionTLS12}
	}
	store, err := accounts.OpenConfigured(ctx, env.Config, 0)
	if err != nil {
		return err
	}
	defer store.Close()
	var ready atomic.Bool
	go func() { ready.Store(store.MigrateRetrying(ctx, env.Log)) }()

	h := &receiver.Handler{
		Engine:         engine,
		Mail:           &env.Config.Mail,
		Accounts:       store,
		Ready:          ready.Load,
		LMTPNetwork:    "unix",
		LMTPAddr:       cfg.LMTPSocket,
		LMTPTimeout:    cfg.LMTPTimeout.D(),
		MaxMessageSize: cfg.MaxMessageSize,
		MaxRecipients:  cfg.MaxRecipients,
		MaxConcurrent:  cfg.MaxConcurrent,
		RequestTimeout: cfg.RequestTimeout.D(),
		SpoolDir:       cfg.SpoolDir,
		Unknown:        receiver.NewUnknownLimiter(cfg.UnknownBurst, cfg.UnknownPerMinute),
		Log:            env.Log,
		Metrics:        receiver.NewMetrics(env.Registry),
		Panics:         env.Panics,
	}
	ln, err := listen(cfg.Listen, cfg)
	if err != nil {
		return err
	}
	bindings := []daemon.Binding{daemon.On(NewServer(h, cfg, nil, env.Log), ln)}
	if tlsConf != nil {
		tln, err := listen(cfg.TLSListen, cfg)
		if err != nil {
			_ = ln.Close() // the bind error is the one to report
			return err
		}
		bindings = append(bindings, daemon.On(NewServer(h, cfg, tlsConf, env.Log), tln))
	}
	if cfg.LMTPListen != "" {
		srv, err := newSender(cfg, env)
		if err != nil {
			closeAll(bindings)
			return err
		}
		lln, err := unixsock.Listen(cfg.LMTPListen, uint32(cfg.LMTPListenMode), cfg.LMTPListenGroup)
		if err != nil {
			closeAll(bindings)
			return err
		}
		bindings = append(bindings, daemon.On(srv, lln))
	}
	env.Log.Info("serving", "listen", cfg.Listen, "tls_listen", cfg.TLSListen, "lmtp", cfg.LMTPSocket, "lmtp_listen", cfg.LMTPListen)
	return env.Serve(ctx, bindings...)
}

func closeAll(bs []daemon.Binding) {
	for _, b := range bs {
		_ = b.Listener.Close() // the error that stopped the start is the one to report
	}
}

// newSender is the sender's LMTP server for Postfix (lmtp_listen): the
// peers' certificates verified against ca_file (or the system roots).
func newSender(cfg *Config, env *daemon.Env) (*sender.Server, error) {
	sc := SenderConfig(cfg)
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, &config.Error{Key: "mxdeliv.ca_file", Msg: err.Error()}
		}
		sc.RootCAs = x509.NewCertPool()
		if !sc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, &config.Error{Key: "mxdeliv.ca_file", Msg: "no PEM certificate in it"}
		}
	}
	m := sender.NewMetrics(env.Registry)
	snd, err := sender.New(sc, env.Log, m)
	if err != nil {
		return nil, &config.Error{Key: "mxdeliv.hostname", Msg: err.Error()}
	}
	return &sender.Server{
		Deliverer: snd,
		Hostname:  cfg.Hostname,
		Log:       env.Log,
		Metrics:   m,
		Panics:    env.Panics,
		SpoolDir:  cfg.SpoolDir,
		// A minute for the domains that waited for a slot; Validate
		// keeps it under Postfix's lmtp_data_done_timeout.
		TransactionTimeout: cfg.DeliveryTimeout.D() + time.Minute,
		// Postfix's message_size_limit is at most max_message_size.
		MaxMessageSize: cfg.MaxMessageSize,
	}, nil
}

// SenderConfig is the sender's part of the section (without RootCAs,
// which newSender reads from ca_file).
func SenderConfig(cfg *Config) sender.Config {
	ttl := cfg.SMTPOnlyTTL.D()
	if ttl == 0 {
		ttl = -1 // sender.Config: 0 is its default, negative never
	}
	return sender.Config{
		Hostname:               cfg.Hostname,
		InsecureTLSDomains:     append([]string(nil), cfg.InsecureTLSDomains...),
		ConnectTimeout:         cfg.ConnectTimeout.D(),
		HTTPTimeout:            cfg.HTTPTimeout.D(),
		DeliveryTimeout:        cfg.DeliveryTimeout.D(),
		SMTPOnlyTTL:            ttl,
		DestinationConcurrency: cfg.DestinationConcurrency,
	}
}

func listen(addr string, cfg *Config) (net.Listener, error) {
	if _, _, err := unixsock.ParseAddr(addr); err != nil {
		return nil, &config.Error{Key: "mxdeliv.listen", Msg: err.Error()}
	}
	return unixsock.ListenAddr(addr, uint32(cfg.SocketMode), cfg.SocketGroup)
}

// Server is an http.Server in the shape of the daemons' protocol servers:
// Serve(ln) until Shutdown(ctx), which lets requests in progress be
// answered within ctx.
type Server struct {
	srv *http.Server
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = connserve.ErrServerClosed

// NewServer serves h, over TLS when tlsConf is set (HTTP/2 then too).
// The handler bounds each request (request_timeout); the server's own
// timeouts bound what comes before and around it.
func NewServer(h http.Handler, cfg *Config, tlsConf *tls.Config, log *slog.Logger) *Server {
	rt := cfg.RequestTimeout.D()
	return &Server{srv: &http.Server{
		Handler:           h,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       rt + 10*time.Second,
		WriteTimeout:      rt + 15*time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    64 << 10, // 100 X-Mail-To of the longest addresses fit
		// Handshake failures from anyone on the internet: debug only (and
		// No-Log masks their peer addresses).
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	var err error
	if s.srv.TLSConfig != nil {
		err = s.srv.ServeTLS(ln, "", "")
	} else {
		err = s.srv.Serve(ln)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, closes idle connections and waits for the
// requests in progress to be answered; when ctx ends first it closes
// what is left (the sender sees a failure and falls back to SMTP).
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close() // out of budget: the error to report is ctx's
	}
	return err
}

// certReloader serves the certificate files, re-reading them when they
// change (a renewal), at most every certCheck.
type certReloader struct {
	certFile, keyFile string
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	mtime   time.Time
	checked time.Time
}

const certCheck = 10 * time.Second

func newCertReloader(certFile, keyFile string, log *slog.Logger) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	if err := r.load(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *certReloader) modTime() time.Time {
	var t time.Time
	for _, f := range []string{r.certFile, r.keyFile} {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(t) {
			t = fi.ModTime()
		}
	}
	return t
}

func (r *certReloader) load() error {
	mt := r.modTime()
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return err
	}
	r.cert, r.mtime = &c, mt
	return nil
}

func (r *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now := time.Now(); now.Sub(r.checked) >= certCheck {
		r.checked = now
		if r.modTime().After(r.mtime) {
			if err := r.load(); err != nil {
				// A half-written renewal: keep serving the old one.
				r.log.Warn("cannot reload the TLS certificate, keeping the old one", "err", err)
			} else {
				r.log.Info("reloaded the TLS certificate")
			}
		}
	}
	return r.cert, nil
}
