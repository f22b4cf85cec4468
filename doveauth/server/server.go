// Package server runs doveauth: the dict socket, the account store and the
// background work around them.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"chatmail.dev/doveauth/accountdict"
	"chatmail.dev/doveauth/socketmap"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/dict"
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
	Metrics        string          `toml:"metrics"`
}

// DefaultConfig returns the defaults of the [doveauth] section.
func DefaultConfig() Config {
	return Config{
		Socket: "/run/doveauth/doveauth.socket", SocketMode: 0o660,
		Socketmap: "/var/spool/postfix/doveauth/socketmap.socket", SocketmapMode: 0o660,
		Metrics: "127.0.0.1:9721",
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if c.Socket == "" {
		return &config.Error{Key: "socket", Msg: "must be set"}
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// Server is a configured doveauth.
type Server struct{ cfg *Config }

// New returns a doveauth that reads cfg when it runs.
func New(cfg *Config) *Server { return &Server{cfg: cfg} }

// Run serves until ctx ends, then drains.
func (s *Server) Run(ctx context.Context, env *daemon.Env) error {
	if err := env.Config.RequirePostgres(); err != nil {
		return err
	}
	dsn, err := env.Config.PostgresDSN()
	if err != nil {
		return err
	}
	store, err := accounts.Open(ctx, dsn, env.Config.Postgres.MaxConns)
	if err != nil {
		return &config.Error{Key: "postgres.dsn", Msg: err.Error()}
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
	}
	gate := &migrationGate{next: svc}
	go func() {
		gate.migrate(ctx, store, env.Log)
		purgeTombstones(ctx, store, env.Config.Accounts.TombstoneLifetime.D(), env.Log)
	}()

	ln, err := unixsock.Listen(s.cfg.Socket, uint32(s.cfg.SocketMode), s.cfg.SocketGroup)
	if err != nil {
		return err
	}
	timeout := env.Config.Postgres.QueryTimeout.D()
	dictSrv := &dict.Server{Handler: gate, Log: env.Log, IdleTimeout: time.Minute, RequestTimeout: timeout}
	errc := make(chan error, 2)
	go func() { errc <- ignoreClosed(dictSrv.Serve(ln)) }()
	servers := []interface{ Shutdown(context.Context) error }{dictSrv}
	if s.cfg.Socketmap != "" {
		mln, err := unixsock.Listen(s.cfg.Socketmap, uint32(s.cfg.SocketmapMode), s.cfg.SocketmapGroup)
		if err != nil {
			ln.Close()
			return err
		}
		mapSrv := &socketmap.Server{Handler: gate.senderAccess(svc), Log: env.Log, IdleTimeout: time.Minute, RequestTimeout: timeout}
		go func() { errc <- ignoreClosed(mapSrv.Serve(mln)) }()
		servers = append(servers, mapSrv)
	}
	env.Log.Info("serving", "socket", s.cfg.Socket, "socketmap", s.cfg.Socketmap)
	select {
	case err := <-errc:
		if err == nil {
			err = errors.New("listener closed")
		}
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	for _, srv := range servers {
		if err := srv.Shutdown(sctx); err != nil {
			return fmt.Errorf("drain: %w", err)
		}
	}
	return nil
}

// ignoreClosed drops the error both servers return after Shutdown.
func ignoreClosed(err error) error {
	if errors.Is(err, connserve.ErrServerClosed) {
		return nil
	}
	return err
}

// migrationGate answers "try again later" until the schema is in place, so
// doveauth can start while PostgreSQL is still down.
type migrationGate struct {
	next  dict.Handler
	ready atomic.Bool
}

var errNotReady = errors.New("account store not ready, try again later")

func (g *migrationGate) migrate(ctx context.Context, store *accounts.Store, log *slog.Logger) {
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		err := store.Migrate(ctx)
		if err == nil {
			g.ready.Store(true)
			log.Info("account store ready")
			return
		}
		if errors.Is(err, accounts.ErrSchemaNewer) {
			// Not transient: the admin has to run the newer release.
			log.Error("account store unusable, retrying", "err", err, "delay", delay)
		} else {
			log.Warn("account store not ready, retrying", "err", err, "delay", delay)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

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
