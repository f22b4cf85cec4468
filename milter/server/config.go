package server

import (
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/unixsock"
)

// Config is the [milter] section of the chatmail config file: where the
// milter listens, and the mail rules it applies.
//
//	[milter]
//	listen = "unix:/var/spool/postfix/chatmail-milter/milter.sock"
//	socket_mode = "0660"     # unix sockets only; a stale socket is removed
//	socket_group = "postfix" # optional: chgrp the socket so Postfix can use it
//	metrics = "127.0.0.1:9725"
//	# and the settings of mailpolicy.Config
//
// Postfix must run the milter with milter_default_action = tempfail (the
// Postfix default), so that mail is deferred, never passed unfiltered, while
// the milter is down or restarting.
type Config struct {
	Listen      string          `toml:"listen"`
	SocketMode  config.FileMode `toml:"socket_mode"`
	SocketGroup string          `toml:"socket_group"`
	Metrics     string          `toml:"metrics"`
	mailpolicy.Config
}

// Defaults returns the section before the file is applied.
func Defaults() Config {
	return Config{
		Listen:     "unix:/var/spool/postfix/chatmail-milter/milter.sock",
		SocketMode: 0o660,
		Metrics:    "127.0.0.1:9725",
		Config:     mailpolicy.Defaults(),
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if _, _, err := unixsock.ParseAddr(c.Listen); err != nil {
		return &config.Error{Key: "listen", Msg: err.Error()}
	}
	if err := config.CheckLoopback("metrics", c.Metrics); err != nil {
		return err
	}
	return c.Config.Validate()
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }
