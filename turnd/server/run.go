package server

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/turncred"
)

// DrainTimeout is turnd's drain budget. TURN has nothing to drain: an
// allocation lives for minutes to hours, so stopping ends every relayed
// call at once (clients allocate anew through ICE restarts); the budget
// covers closing the sockets.
const DrainTimeout = 5 * time.Second

// Run serves TURN until ctx ends.
func Run(ctx context.Context, env *daemon.Env, cfg *Config) error {
	secret, err := turncred.LoadSecret(env.Config.Turn.SecretFile)
	if err != nil {
		return &config.Error{Key: "turn.secret_file", Msg: err.Error()}
	}
	store, err := accounts.OpenConfigured(ctx, env.Config, 0)
	if err != nil {
		return err
	}
	defer store.Close()

	// Until the schema is in place turnd refuses allocations (not_ready).
	var ready atomic.Bool
	go func() { ready.Store(store.MigrateRetrying(ctx, env.Log)) }()

	udp, tcp, err := Listen(cfg)
	if err != nil {
		return err
	}
	srv, err := New(Options{
		Config: cfg, Realm: env.Config.Turn.Realm, Secret: secret, Store: store, Ready: ready.Load,
		Log: env.Log, Registry: env.Registry, Panics: env.Panics,
	}, udp, tcp)
	if err != nil {
		for _, c := range udp {
			_ = c.Close() // the setup error is the one to report
		}
		for _, l := range tcp {
			_ = l.Close()
		}
		return err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { store.WatchChanges(wctx, srv, env.Log); close(watched) }()
	if !listensOn(cfg, env.Config.Turn.Port) {
		env.Log.Warn("no listen_udp address has the port clients are told ([turn] port)", "port", env.Config.Turn.Port)
	}
	env.Log.Info("serving TURN", "udp", cfg.ListenUDP, "tcp", cfg.ListenTCP, "udp_sockets", cfg.udpSockets(),
		"relay_address", cfg.RelayAddress, "relay_bind", cfg.RelayBind, "realm", env.Config.Turn.Realm)
	if err := daemon.Notify("READY=1"); err != nil {
		env.Log.Warn("cannot tell systemd the daemon is ready", "err", err)
	}
	err = srv.Serve(ctx)
	if cerr := srv.Close(); cerr != nil && err == nil {
		err = cerr
	}
	stopWatch()
	<-watched
	return err
}

func listensOn(cfg *Config, port int) bool {
	for _, a := range cfg.ListenUDP {
		if _, p, err := net.SplitHostPort(a); err == nil && p == strconv.Itoa(port) {
			return true
		}
	}
	return false
}
