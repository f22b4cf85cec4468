// Package server runs doveauth: the dict socket, the socketmap socket, the
// HTTP socket of Dovecot 2.4's Lua passdb and userdb, the account store and
// the background work around them.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"sync/atomic"
	"time"

	"chatmail.dev/doveauth/accountdict"
	"chatmail.dev/doveauth/authhttp"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/socketmap"
	"chatmail.dev/sidecar/unixsock"
)

// Config is the [doveauth] section.
type Config struct {
	// Socket is the unix socket Dovecot's dict client connects to.
	Socket     string          `toml:"socket"`
	SocketMode config.FileMode `toml:"socket_mode"`
	// SocketGroup, if set, owns the socket, for Dovecot processes in that group.
	SocketGroup string `toml:"socket_group"`
	// Socketmap, if set, serves Postfix's check_sasl_access lookups, so that
	// a blocked account cannot send over an SMTP session opened before.
	Socketmap      string          `toml:"socketmap"`
	SocketmapMode  config.FileMode `toml:"socketmap_mode"`
	SocketmapGroup string          `toml:"socketmap_group"`
	// HTTPSocket, if set, serves Dovecot 2.4's Lua passdb and userdb
	// (deploy/dovecot24/chatmail-auth.lua) over HTTP on this unix socket
	// (doveauth/authhttp). Never a TCP port: it hands out password hashes
	// and creates accounts. Its default mode, 0600 without a group, admits
	// doveauth's user and root, as which Dovecot 2.4's auth-worker runs the
	// Lua: group dovecot would admit every imap and lmtp process too.
	HTTPSocket      string          `toml:"http_socket"`
	HTTPSocketMode  config.FileMode `toml:"http_socket_mode"`
	HTTPSocketGroup string          `toml:"http_socket_group"`
	// DictAuth serves passdb, userdb and the account list over the dict
	// socket (Dovecot 2.3). Set it false with Dovecot 2.4, where the HTTP
	// socket serves them and the dict socket, reachable by every mail
	// process for quota_clone and last_login, must not.
	DictAuth bool   `toml:"dict_auth"`
	Metrics  string `toml:"metrics"`
}

// DefaultConfig returns the defaults of the [doveauth] section.
func DefaultConfig() Config {
	return Config{
		Socket: "/run/doveauth/doveauth.socket", SocketMode: 0o660,
		Socketmap: "/var/spool/postfix/doveauth/socketmap.socket", SocketmapMode: 0o660,
		HTTPSocketMode: 0o600,
		DictAuth:       true,
		Metrics:        "127.0.0.1:9721",
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if c.Socket == "" {
		return &config.Error{Key: "socket", Msg: "must be set"}
	}
	if c.HTTPSocket != "" && !filepath.IsAbs(c.HTTPSocket) {
		return &config.Error{Key: "http_socket", Msg: "must be the absolute path of a unix socket (never a TCP port: it hands out password hashes)"}
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }

// DrainTimeout is doveauth's drain budget, from SIGTERM to exit: lookups
// and commits in progress are answered within it (their own bound is the
// query timeout). deploy/systemd/doveauth.service sets TimeoutStopSec
// above it.
const DrainTimeout = 10 * time.Second

// Run serves the dict socket and, if configured, the socketmap and HTTP
// sockets until ctx ends, then drains.
func Run(ctx context.Context, env *daemon.Env, cfg *Config) error {
	store, err := accounts.OpenConfigured(ctx, env.Config, 0)
	if err != nil {
		return err
	}
	defer store.Close()
	// Without its key doveauth cannot honour tombstones: it does not start.
	key, err := accounts.LoadTombstoneKey(env.Config.Accounts.TombstoneKeyFile)
	if err != nil {
		return &config.Error{Key: "accounts.tombstone_key_file", Msg: err.Error()}
	}

	svc := &accountdict.Service{
		Store:        store,
		Mail:         env.Config.Mail,
		Accounts:     env.Config.Accounts,
		Log:          env.Log,
		Metrics:      accountdict.NewMetrics(env.Registry),
		TombstoneKey: key,
		NoDictAuth:   !cfg.DictAuth,
	}
	// Account lifecycle (issue 9): block, unblock and delete drop the userdb cache via the store's notifications.
	go store.WatchChanges(ctx, svc, env.Log)
	gate := &migrationGate{next: svc}
	go func() {
		if !store.MigrateRetrying(ctx, env.Log) {
			return
		}
		gate.ready.Store(true)
		purgeTombstones(ctx, store, env.Config.Accounts.TombstoneLifetime.D(), env.Log)
	}()

	var lns []net.Listener
	listen := func(path string, mode config.FileMode, group string) (net.Listener, error) {
		ln, err := unixsock.Listen(path, uint32(mode), group)
		if err != nil {
			for _, l := range lns {
				_ = l.Close() // the bind error is the one to report
			}
			return nil, err
		}
		lns = append(lns, ln)
		return ln, nil
	}
	ln, err := listen(cfg.Socket, cfg.SocketMode, cfg.SocketGroup)
	if err != nil {
		return err
	}
	timeout := env.Config.Postgres.QueryTimeout.D()
	servers := []daemon.Binding{daemon.On(&dict.Server{
		Handler: gate, Log: env.Log, Panics: env.Panics, IdleTimeout: time.Minute, RequestTimeout: timeout,
	}, ln)}
	if cfg.Socketmap != "" {
		mln, err := listen(cfg.Socketmap, cfg.SocketmapMode, cfg.SocketmapGroup)
		if err != nil {
			return err
		}
		servers = append(servers, daemon.On(&socketmap.Server{
			Handler: gate.senderAccess(svc), Log: env.Log, Panics: env.Panics, IdleTimeout: time.Minute, RequestTimeout: timeout,
		}, mln))
	}
	if cfg.HTTPSocket != "" {
		hln, err := listen(cfg.HTTPSocket, cfg.HTTPSocketMode, cfg.HTTPSocketGroup)
		if err != nil {
			return err
		}
		servers = append(servers, daemon.On(&authhttp.Server{
			Accounts: svc, Ready: gate.ready.Load, Log: env.Log, Panics: env.Panics, IdleTimeout: time.Minute, RequestTimeout: timeout,
		}, hln))
	}
	if cfg.HTTPSocket != "" && cfg.DictAuth {
		// Dovecot 2.4 reads passdb and userdb over HTTP; its mail
		// processes reach the dict socket.
		env.Log.Warn("http_socket is set and dict_auth is true: the dict socket also hands out password hashes and lists accounts; set dict_auth = false with Dovecot 2.4")
	}
	env.Log.Info("serving", "socket", cfg.Socket, "socketmap", cfg.Socketmap, "http_socket", cfg.HTTPSocket)
	return env.Serve(ctx, servers...)
}

// migrationGate answers "try again later" until the schema is in place, so
// doveauth can start while PostgreSQL is still down.
type migrationGate struct {
	next  dict.Handler
	ready atomic.Bool
}

var errNotReady = errors.New("account store not ready, try again later")

// purgeTombstones removes expired tombstones now and every hour, so that
// the database keeps them no longer than tombstone_lifetime.
func purgeTombstones(ctx context.Context, store *accounts.Store, lifetime time.Duration, log *slog.Logger) {
	if lifetime <= 0 || ctx.Err() != nil {
		return
	}
	for {
		if n, err := store.PurgeTombstones(ctx, lifetime); err != nil {
			log.Warn("purging expired tombstones failed", "err", err)
		} else if n > 0 {
			log.Info("purged expired tombstones", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}

func (g *migrationGate) Lookup(ctx context.Context, req dict.Lookup) (string, bool, error) {
	if !g.ready.Load() {
		return "", false, errNotReady
	}
	return g.next.Lookup(ctx, req)
}

func (g *migrationGate) Iterate(ctx context.Context, req dict.Iterate, emit func(k, v string) error) error {
	if !g.ready.Load() {
		return errNotReady
	}
	return g.next.Iterate(ctx, req, emit)
}

func (g *migrationGate) senderAccess(svc *accountdict.Service) socketmap.Handler {
	return func(ctx context.Context, name, key string) (socketmap.Result, error) {
		if !g.ready.Load() {
			return socketmap.Result{}, errNotReady
		}
		return svc.SenderAccess(ctx, name, key)
	}
}

func (g *migrationGate) Commit(ctx context.Context, tx *dict.Tx) error {
	if !g.ready.Load() {
		return errNotReady
	}
	return g.next.Commit(ctx, tx)
}
