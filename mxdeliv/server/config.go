package server

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/unixsock"
)

// Config is the [mxdeliv] section of the chatmail config file.
//
//	[mxdeliv]
//	listen = "unix:/run/chatmail-mxdeliv/mxdeliv.sock" # or "inet:127.0.0.1:10082"; plain HTTP for the web server in front
//	socket_mode = "0660"            # unix sockets only; a stale socket is removed
//	socket_group = ""               # e.g. "www-data", the web server's group
//	tls_listen = ""                 # e.g. "inet:[::]:443": HTTPS without a web server in front
//	tls_cert_file = ""              # PEM chain; re-read when it changes (renewals)
//	tls_key_file = ""
//	lmtp_socket = "/run/dovecot/chatmail-mxdeliv-lmtp"
//	lmtp_timeout = "30s"            # each LMTP command and each write of the message
//	max_message_size = 31457280     # bytes, Postfix's message_size_limit (the relay's max_message_size)
//	max_recipients = 100            # X-Mail-To fields per request
//	max_concurrent = 16             # requests in progress; more get 503
//	request_timeout = "50s"         # from the request's header to the answer
//	spool_dir = ""                  # bodies over 256 KiB, unlinked; "" is $TMPDIR
//	unknown_burst = 10              # unknown-recipient answers per From domain...
//	unknown_per_minute = 1.0        # ...then this many a minute
//	metrics = "127.0.0.1:9733"
//
//	# The sender: outgoing mail Postfix hands over LMTP (its mxdeliv
//	# transport), delivered by POST https://MX/mxdeliv, SMTP with STARTTLS
//	# as the fallback (package sender). "" runs the receiver only.
//	lmtp_listen = ""                # e.g. "/var/spool/postfix/chatmail-mxdeliv/lmtp.sock"
//	lmtp_listen_mode = "0660"
//	lmtp_listen_group = "postfix"   # Postfix's lmtp client keeps no other group
//	hostname = ""                   # our name in EHLO and LHLO, e.g. "mx.chat.example.org"; required with lmtp_listen
//	ca_file = ""                    # PEM roots peers' certificates must chain to; "" is the system roots
//	insecure_tls_domains = []       # recipient domains whose certificates are not verified (test setups only)
//	connect_timeout = "30s"         # a TCP connect and a TLS handshake
//	http_timeout = "60s"            # one POST, body and answer
//	delivery_timeout = "8m"         # one domain, every MX, both paths; at most 12m (Postfix's lmtp_data_done_timeout is 900s)
//	smtp_only_ttl = "30m"           # a host whose POST failed and SMTP took the mail: SMTP only for this long; "0s" never
//	destination_concurrency = 20    # deliveries in progress per recipient domain
//
// The mail rules are the milter's: verify_dkim, dkim_keys_dir and
// dns_timeout of [milter] (mailpolicy.Config) are read from that section
// of the same file, so that mail over /mxdeliv and over SMTP is judged
// alike. The receiver never signs, so it needs no DKIM key.
type Config struct {
	Listen           string          `toml:"listen"`
	SocketMode       config.FileMode `toml:"socket_mode"`
	SocketGroup      string          `toml:"socket_group"`
	TLSListen        string          `toml:"tls_listen"`
	TLSCertFile      string          `toml:"tls_cert_file"`
	TLSKeyFile       string          `toml:"tls_key_file"`
	LMTPSocket       string          `toml:"lmtp_socket"`
	LMTPTimeout      config.Duration `toml:"lmtp_timeout"`
	MaxMessageSize   int64           `toml:"max_message_size"`
	MaxRecipients    int             `toml:"max_recipients"`
	MaxConcurrent    int             `toml:"max_concurrent"`
	RequestTimeout   config.Duration `toml:"request_timeout"`
	SpoolDir         string          `toml:"spool_dir"`
	UnknownBurst     int             `toml:"unknown_burst"`
	UnknownPerMinute float64         `toml:"unknown_per_minute"`
	Metrics          string          `toml:"metrics"`

	LMTPListen             string          `toml:"lmtp_listen"`
	LMTPListenMode         config.FileMode `toml:"lmtp_listen_mode"`
	LMTPListenGroup        string          `toml:"lmtp_listen_group"`
	Hostname               string          `toml:"hostname"`
	CAFile                 string          `toml:"ca_file"`
	InsecureTLSDomains     []string        `toml:"insecure_tls_domains"`
	ConnectTimeout         config.Duration `toml:"connect_timeout"`
	HTTPTimeout            config.Duration `toml:"http_timeout"`
	DeliveryTimeout        config.Duration `toml:"delivery_timeout"`
	SMTPOnlyTTL            config.Duration `toml:"smtp_only_ttl"`
	DestinationConcurrency int             `toml:"destination_concurrency"`
}

// Defaults returns the section before the file is applied.
func Defaults() Config {
	return Config{
		Listen:           "unix:/run/chatmail-mxdeliv/mxdeliv.sock",
		SocketMode:       0o660,
		LMTPSocket:       "/run/dovecot/chatmail-mxdeliv-lmtp",
		LMTPTimeout:      config.Duration(30 * time.Second),
		MaxMessageSize:   31457280,
		MaxRecipients:    100,
		MaxConcurrent:    16,
		RequestTimeout:   config.Duration(50 * time.Second),
		UnknownBurst:     10,
		UnknownPerMinute: 1,
		Metrics:          "127.0.0.1:9733",

		LMTPListenMode:         0o660,
		LMTPListenGroup:        "postfix",
		InsecureTLSDomains:     []string{},
		ConnectTimeout:         config.Duration(30 * time.Second),
		HTTPTimeout:            config.Duration(60 * time.Second),
		DeliveryTimeout:        config.Duration(8 * time.Minute),
		SMTPOnlyTTL:            config.Duration(30 * time.Minute),
		DestinationConcurrency: 20,
	}
}

// maxDeliveryTimeout keeps a message's deliveries (a minute more, for the
// domains that wait for a slot) under the lmtp_data_done_timeout (900s) of
// master.cf's mxdeliv service: past it Postfix sends every recipient again.
const maxDeliveryTimeout = 12 * time.Minute

// maxRequestTimeout leaves a request in progress at SIGTERM room to be
// answered within the drain (DrainTimeout less daemon.ExitMargin).
const maxRequestTimeout = DrainTimeout - 5*time.Second

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if _, _, err := unixsock.ParseAddr(c.Listen); err != nil {
		return &config.Error{Key: "listen", Msg: err.Error()}
	}
	if c.TLSListen != "" {
		if _, _, err := unixsock.ParseAddr(c.TLSListen); err != nil {
			return &config.Error{Key: "tls_listen", Msg: err.Error()}
		}
		if c.TLSCertFile == "" || c.TLSKeyFile == "" {
			return &config.Error{Key: "tls_listen", Msg: "needs tls_cert_file and tls_key_file"}
		}
	}
	if !filepath.IsAbs(c.LMTPSocket) {
		return &config.Error{Key: "lmtp_socket", Msg: "must be the absolute path of Dovecot's LMTP socket"}
	}
	if c.LMTPTimeout <= 0 {
		return &config.Error{Key: "lmtp_timeout", Msg: "must be positive"}
	}
	if c.MaxMessageSize < 1024 || c.MaxMessageSize > 1<<30 {
		return &config.Error{Key: "max_message_size", Msg: "must be 1 KiB to 1 GiB"}
	}
	if c.MaxRecipients < 1 || c.MaxRecipients > 1000 {
		return &config.Error{Key: "max_recipients", Msg: "must be 1 to 1000"}
	}
	if c.MaxConcurrent < 1 {
		return &config.Error{Key: "max_concurrent", Msg: "must be at least 1"}
	}
	if c.RequestTimeout.D() < time.Second || c.RequestTimeout.D() > maxRequestTimeout {
		return &config.Error{Key: "request_timeout", Msg: fmt.Sprintf("must be 1s to %v (within the drain)", maxRequestTimeout)}
	}
	if c.SpoolDir != "" && !filepath.IsAbs(c.SpoolDir) {
		return &config.Error{Key: "spool_dir", Msg: "must be an absolute path"}
	}
	if c.UnknownBurst < 1 {
		return &config.Error{Key: "unknown_burst", Msg: "must be at least 1"}
	}
	if !(c.UnknownPerMinute > 0) || c.UnknownPerMinute > 1e6 {
		return &config.Error{Key: "unknown_per_minute", Msg: "must be positive"}
	}
	if err := c.validateSender(); err != nil {
		return err
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// validateSender checks the sender's keys; with lmtp_listen "" they are
// not used.
func (c *Config) validateSender() error {
	if c.LMTPListen == "" {
		return nil
	}
	if !filepath.IsAbs(c.LMTPListen) {
		return &config.Error{Key: "lmtp_listen", Msg: "must be the absolute path of the unix socket Postfix delivers to"}
	}
	if c.Hostname == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		return &config.Error{Key: "hostname", Msg: "must be our mail server's name (EHLO), e.g. mx.chat.example.org"}
	}
	if c.CAFile != "" && !filepath.IsAbs(c.CAFile) {
		return &config.Error{Key: "ca_file", Msg: "must be an absolute path"}
	}
	for _, d := range c.InsecureTLSDomains {
		if d == "" || strings.ContainsAny(d, "@ \t") {
			return &config.Error{Key: "insecure_tls_domains", Msg: fmt.Sprintf("%q is not a domain", d)}
		}
	}
	for _, d := range []struct {
		key string
		v   config.Duration
	}{{"connect_timeout", c.ConnectTimeout}, {"http_timeout", c.HTTPTimeout}, {"delivery_timeout", c.DeliveryTimeout}} {
		if d.v <= 0 {
			return &config.Error{Key: d.key, Msg: "must be positive"}
		}
	}
	if c.DeliveryTimeout.D() < c.HTTPTimeout.D() {
		return &config.Error{Key: "delivery_timeout", Msg: "must be at least http_timeout"}
	}
	if c.DeliveryTimeout.D() > maxDeliveryTimeout {
		return &config.Error{Key: "delivery_timeout", Msg: fmt.Sprintf("must be at most %v (under Postfix's lmtp_data_done_timeout of the mxdeliv service, 900s)", maxDeliveryTimeout)}
	}
	if c.SMTPOnlyTTL < 0 {
		return &config.Error{Key: "smtp_only_ttl", Msg: "must not be negative (0: never SMTP only)"}
	}
	if c.DestinationConcurrency < 1 {
		return &config.Error{Key: "destination_concurrency", Msg: "must be at least 1"}
	}
	return nil
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }

// PolicyConfig reads the mail rules' settings from the [milter] section
// of the file at path, over mailpolicy.Defaults(), and checks them. The
// milter's own keys (listen, socket_mode, socket_group, metrics) are left
// to it: only the section's strict reading by the milter reports typos.
// The signing keys are dropped: incoming mail is never signed, and the
// receiver needs no access to them.
func PolicyConfig(path string) (*mailpolicy.Config, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, &config.Error{Msg: err.Error()}
	}
	return ParsePolicyConfig(string(text))
}

// ParsePolicyConfig is PolicyConfig on the file's text.
func ParsePolicyConfig(text string) (*mailpolicy.Config, error) {
	var raw map[string]toml.Primitive
	md, err := toml.Decode(text, &raw)
	if err != nil {
		return nil, &config.Error{Msg: err.Error()}
	}
	c := mailpolicy.Defaults()
	if p, ok := raw["milter"]; ok {
		if err := md.PrimitiveDecode(p, &c); err != nil {
			return nil, &config.Error{Key: "milter", Msg: err.Error()}
		}
	}
	if err := c.Validate(); err != nil {
		if ce, ok := err.(*config.Error); ok && ce.Key != "" {
			ce.Key = "milter." + ce.Key
		}
		return nil, err
	}
	c.DKIMSelector, c.DKIMKeyFile, c.DKIMDomains = "", "", nil
	return &c, nil
}
