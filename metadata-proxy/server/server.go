// Package server runs metadata-proxy (chatmail-metadata): Dovecot's
// METADATA dict on a unix socket (metadict), the push worker (push), and
// the expiry of device tokens, over the PostgreSQL account store.
package server

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"chatmail.dev/metadata-proxy/metadict"
	"chatmail.dev/metadata-proxy/push"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/turncred"
	"chatmail.dev/sidecar/unixsock"
)

// DrainTimeout is metadata-proxy's drain budget, from SIGTERM to exit:
// lookups and commits in progress are answered (bounded by the query
// timeout) and the POSTs in flight finish (push.PostTimeout), side by
// side. deploy/systemd sets TimeoutStopSec above it.
const DrainTimeout = 15 * time.Second

// Run serves the dict socket and posts push notifications until ctx ends,
// then drains.
func Run(ctx context.Context, env *daemon.Env, cfg *Config) error {
	turn := env.Config.Turn
	secret, err := turncred.LoadSecret(turn.SecretFile)
	if err != nil {
		return &config.Error{Key: "turn.secret_file", Msg: err.Error()}
	}
	var appVersions string
	if cfg.AppVersionsFile != "" {
		if appVersions, err = metadict.LoadAppVersions(cfg.AppVersionsFile); err != nil {
			return &config.Error{Key: "metadata-proxy.appversions_file", Msg: err.Error()}
		}
	}
	store, err := accounts.OpenConfigured(ctx, env.Config, 0)
	if err != nil {
		return err
	}
	defer store.Close()

	var ready atomic.Bool
	svc := &metadict.Service{
		Store:     store,
		Ready:     ready.Load,
		Turn:      metadict.Turn{Host: turn.Host, Port: turn.Port, Lifetime: turn.Lifetime.D(), Secret: secret},
		IrohRelay: cfg.IrohRelay, AppVersions: appVersions,
		MaxSMTPRecipients: cfg.MaxSMTPRecipients,
		Push:              cfg.PushGateway != "",
		Log:               env.Log,
		Metrics:           metadict.NewMetrics(env.Registry),
	}
	var background sync.WaitGroup
	defer background.Wait()
	if svc.Push {
		w := &push.Worker{
			Queue: store, Gateway: cfg.PushGateway, Concurrency: cfg.PushConcurrency,
			GiveUp: cfg.PushGiveUp.D(), Cooldown: cfg.PushCooldown.D(), Ready: ready.Load, Log: env.Log, Metrics: push.NewMetrics(env.Registry),
		}
		svc.Queued = w.Wake
		background.Go(func() { w.Run(ctx) })
	}
	background.Go(func() {
		// metadata-proxy may start before PostgreSQL, and before
		// doveauth; until then what needs the store answers "try again
		// later".
		if store.MigrateRetrying(ctx, env.Log) {
			ready.Store(true)
			prune(ctx, store, env.Log)
		}
	})

	ln, err := unixsock.Listen(cfg.Socket, uint32(cfg.SocketMode), cfg.SocketGroup)
	if err != nil {
		return err
	}
	env.Log.Info("serving", "socket", cfg.Socket, "push", svc.Push)
	return env.Serve(ctx, daemon.On(&dict.Server{
		Handler: svc, Log: env.Log, Panics: env.Panics, IdleTimeout: time.Minute,
		RequestTimeout: env.Config.Postgres.QueryTimeout.D(),
	}, ln))
}

// prune removes the device tokens not set for 90 days and the expired TURN
// credentials, now and every hour (reads filter them out meanwhile).
func prune(ctx context.Context, store *accounts.Store, log *slog.Logger) {
	for {
		if n, err := store.PruneDeviceTokens(ctx, time.Now()); err != nil {
			if ctx.Err() == nil {
				log.Warn("pruning expired device tokens failed", "err", err)
			}
		} else if n > 0 {
			log.Info("pruned expired device tokens", "count", n)
		}
		if n, err := store.PurgeTurnCredentials(ctx, time.Now()); err != nil {
			if ctx.Err() == nil {
				log.Warn("purging expired TURN credentials failed", "err", err)
			}
		} else if n > 0 {
			log.Info("purged expired TURN credentials", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Hour):
		}
	}
}
