package server

import (
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"chatmail.dev/metadata-proxy/push"
	"chatmail.dev/sidecar/config"
)

// Config is the [metadata-proxy] section. The TURN server whose
// credentials it hands out is the common [turn] section.
type Config struct {
	// Socket is the unix socket Dovecot's METADATA dict client connects
	// to: IMAP and LMTP processes, as the mail user.
	Socket      string          `toml:"socket"`
	SocketMode  config.FileMode `toml:"socket_mode"`
	SocketGroup string          `toml:"socket_group"`
	Metrics     string          `toml:"metrics"`
	// IrohRelay is served as /shared/vendor/deltachat/irohrelay: the
	// iroh relay URL of webxdc realtime channels. Empty: not served
	// (clients use iroh's public relays).
	IrohRelay string `toml:"irohrelay"`
	// MaxSMTPRecipients is served as maxsmtprecipients: Delta Chat sends
	// a message to at most this many recipients per SMTP transaction. Its
	// presence also makes Delta Chat upload its push token. Keep it at
	// most the milter's [milter] max_recipients, which refuses the excess.
	MaxSMTPRecipients int `toml:"max_smtp_recipients"`
	// AppVersionsFile, if set, is a JSON file served as
	// /shared/vendor/deltachat/appversions (one compact line), checked
	// at start (metadict.LoadAppVersions).
	AppVersionsFile string `toml:"appversions_file"`
	// PushGateway is where new-mail notifications are posted, one POST
	// per device token. Empty: push off (tokens not stored).
	PushGateway string `toml:"push_gateway"`
	// PushGiveUp is how long a notification the gateway does not take is
	// retried.
	PushGiveUp config.Duration `toml:"push_give_up"`
	// PushConcurrency is how many POSTs may be in flight at once.
	PushConcurrency int `toml:"push_concurrency"`
	// PushCooldown is how long a token is not posted again after a
	// notification: mail meanwhile gets one push when it ends (push).
	// Zero: none.
	PushCooldown config.Duration `toml:"push_cooldown"`
}

// DefaultConfig returns the defaults of the [metadata-proxy] section.
func DefaultConfig() Config {
	return Config{
		Socket:            "/run/chatmail-metadata/metadata.socket",
		SocketMode:        0o660,
		Metrics:           "127.0.0.1:9729",
		MaxSMTPRecipients: 50,
		PushGateway:       "https://notifications.delta.chat/notify",
		PushGiveUp:        config.Duration(5 * time.Hour),
		PushConcurrency:   4,
		PushCooldown:      config.Duration(push.DefaultCooldown),
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if !filepath.IsAbs(c.Socket) {
		return &config.Error{Key: "socket", Msg: "must be the absolute path of a unix socket"}
	}
	if c.IrohRelay != "" {
		if err := checkURL(c.IrohRelay); err != nil {
			return &config.Error{Key: "irohrelay", Msg: err.Error()}
		}
	}
	if c.MaxSMTPRecipients < 1 || c.MaxSMTPRecipients > 1<<31-1 {
		return &config.Error{Key: "max_smtp_recipients", Msg: "must be at least 1"}
	}
	if c.AppVersionsFile != "" && !filepath.IsAbs(c.AppVersionsFile) {
		return &config.Error{Key: "appversions_file", Msg: "must be an absolute path"}
	}
	if c.PushGateway != "" {
		if err := checkURL(c.PushGateway); err != nil {
			return &config.Error{Key: "push_gateway", Msg: err.Error()}
		}
	}
	if c.PushGiveUp < config.Duration(time.Minute) || c.PushGiveUp > config.Duration(7*24*time.Hour) {
		return &config.Error{Key: "push_give_up", Msg: "must be 1m to 168h"}
	}
	if c.PushConcurrency < 1 || c.PushConcurrency > 64 {
		return &config.Error{Key: "push_concurrency", Msg: "must be 1 to 64"}
	}
	if c.PushCooldown < 0 || c.PushCooldown > config.Duration(time.Hour) {
		return &config.Error{Key: "push_cooldown", Msg: "must be 0s to 1h"}
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// checkURL accepts an absolute http or https URL with a host.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.Fragment != "" {
		return fmt.Errorf("%q: want an absolute http or https URL", s)
	}
	return nil
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }
