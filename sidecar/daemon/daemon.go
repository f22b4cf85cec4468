// Package daemon holds what every chatmail daemon's main does the same way:
// flags, config loading with exit code 2 on errors, logging with the No-Log
// switch, the metrics listener with the panics counter and build_info,
// systemd readiness and stopping notifications and watchdog pings, signal
// handling, and one drain budget from which the servers' shutdown budget
// derives.
//
// A daemon's main is one call:
//
//	daemon.Main(daemon.Spec[*server.Config]{
//		Name: "doveauth", Section: &cfg, DrainTimeout: server.DrainTimeout, Run: server.Run,
//	})
//
// where Run opens what the daemon needs, binds its listeners and hands its
// protocol servers to Env.Serve, which serves until SIGTERM and drains.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/metrics"
)

// Exit codes shared by all daemons; systemd units set RestartPreventExitStatus=2.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitConfig  = 2
)

// DefaultConfigPath is where daemons look without -config.
const DefaultConfigPath = "/etc/chatmail/chatmail.toml"

// ExitMargin is the part of the drain budget kept for what follows the
// servers' shutdown: closing the store and the metrics listener.
const ExitMargin = 2 * time.Second

// Section is a daemon's own section of the config file, as a pointer to
// the struct that holds its defaults.
type Section interface {
	config.Validator
	// MetricsAddr is the loopback address of the metrics listener.
	MetricsAddr() string
}

// Spec describes a daemon to Main.
type Spec[S Section] struct {
	// Name is the daemon's section in the config file, e.g. "doveauth",
	// and the middle of its metric names (chatmail_<name>_...).
	Name string
	// Section holds the defaults; Main fills it from the file.
	Section S
	// DrainTimeout is the daemon's one drain budget: the time from SIGTERM
	// to exit. The servers' shutdown gets DrainTimeout-ExitMargin. The
	// systemd unit's TimeoutStopSec must be larger.
	DrainTimeout time.Duration
	// Run opens what the daemon needs and serves with Env.Serve until ctx
	// ends (SIGTERM/SIGINT), then returns. A *config.Error return means
	// exit code 2.
	Run func(ctx context.Context, env *Env, section S) error
}

// Env is what a daemon's Run gets.
type Env struct {
	// ConfigPath is the file Config came from (-config), for a daemon
	// that also reads another daemon's section of it.
	ConfigPath string
	Config     *config.Common
	Log        *slog.Logger
	NoLog      *logging.NoLog
	Registry   *prometheus.Registry
	// Panics is chatmail_<daemon>_panics_total; every server counts the
	// panics it recovers there.
	Panics prometheus.Counter
	// DrainTimeout is Spec.DrainTimeout.
	DrainTimeout time.Duration
}

// ShutdownTimeout is the servers' share of the drain budget: how long a
// request in progress at SIGTERM may still take to be answered. A per-request
// timeout longer than this cannot be honoured during a drain.
func (e *Env) ShutdownTimeout() time.Duration {
	return max(e.DrainTimeout-ExitMargin, e.DrainTimeout/2)
}

// Server is a protocol server in the net/http shape: Serve(ln) until
// Shutdown(ctx), after which Serve returns connserve.ErrServerClosed.
type Server interface {
	Serve(ln net.Listener) error
	Shutdown(ctx context.Context) error
}

// Binding is a server with the listener it serves.
type Binding struct {
	Server   Server
	Listener net.Listener
}

// On binds srv to ln for Env.Serve.
func On(srv Server, ln net.Listener) Binding { return Binding{srv, ln} }

// Serve runs every server on its listener and tells systemd the daemon is
// ready (the listeners are bound, so nothing connects in vain from now
// on). When ctx ends it shuts the servers down within ShutdownTimeout and
// returns; when a server fails, it shuts the others down and returns the
// failure.
func (e *Env) Serve(ctx context.Context, bs ...Binding) error {
	errc := make(chan error, len(bs))
	for _, b := range bs {
		go func() {
			err := b.Server.Serve(b.Listener)
			if errors.Is(err, connserve.ErrServerClosed) {
				err = nil
			} else if err == nil {
				err = errors.New("listener closed")
			}
			errc <- err
		}()
	}
	if err := Notify("READY=1"); err != nil {
		e.Log.Warn("cannot tell systemd the daemon is ready", "err", err)
	}
	var failed error
	select {
	case <-ctx.Done():
	case failed = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), e.ShutdownTimeout())
	defer cancel()
	for _, b := range bs {
		if err := b.Server.Shutdown(sctx); err != nil && failed == nil {
			failed = fmt.Errorf("drain: %w", err)
		}
	}
	return failed
}

// Main parses flags, loads the config, runs the daemon and exits.
func Main[S Section](spec Spec[S]) {
	fs := flag.NewFlagSet(spec.Name, flag.ContinueOnError)
	path := fs.String("config", DefaultConfigPath, "path of the chatmail config file")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(ExitConfig)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected arguments %q\n", spec.Name, fs.Args())
		os.Exit(ExitConfig)
	}
	os.Exit(run(spec, *path))
}

func run[S Section](spec Spec[S], path string) int {
	cfg, err := config.Load(path, spec.Name, spec.Section)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
		return ExitConfig
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	nolog := &logging.NoLog{}
	log := logging.New(os.Stderr, logging.ParseLevel(cfg.Log.Level), nolog).With("daemon", spec.Name)
	logging.RouteStdLog(log)
	// Pinged until run returns, through the drain: a process stopped while
	// it drains is as stuck as one stopped while it serves.
	wctx, stopWatchdog := context.WithCancel(context.Background())
	watchdogDone := make(chan struct{})
	go func() { Watchdog(wctx, log); close(watchdogDone) }()
	defer func() { stopWatchdog(); <-watchdogDone }()
	if err := followNoLog(ctx, cfg, nolog, log); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
		return ExitConfig
	}

	reg := metrics.NewRegistry()
	metrics.RegisterBuildInfo(reg, spec.Name)
	env := &Env{
		ConfigPath: path, Config: cfg, Log: log, NoLog: nolog, Registry: reg,
		Panics:       metrics.NewPanics(reg, spec.Name),
		DrainTimeout: spec.DrainTimeout,
	}
	if env.DrainTimeout <= 0 {
		env.DrainTimeout = 10 * time.Second
	}
	ms, err := metrics.Listen(spec.Section.MetricsAddr(), reg, log)
	if err != nil {
		log.Error("cannot listen for metrics", "err", err)
		return ExitFailure
	}

	done := make(chan error, 1)
	go func() { done <- spec.Run(ctx, env, spec.Section) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		log.Info("stopping: draining in-flight work", "budget", env.DrainTimeout)
		stop() // a second signal kills the process the default way
		if err := Notify("STOPPING=1"); err != nil {
			log.Warn("cannot tell systemd the daemon is stopping", "err", err)
		}
		select {
		case err = <-done:
		case <-time.After(env.DrainTimeout):
			err = errors.New("drain timed out")
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := ms.Shutdown(sctx); err != nil {
		log.Debug("metrics listener did not stop cleanly", "err", err) // the process is exiting
	}
	switch {
	case err == nil:
		log.Info("stopped")
		return ExitOK
	case config.IsError(err):
		fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
		return ExitConfig
	default:
		log.Error("failed", "err", err)
		return ExitFailure
	}
}

// NoLogWait is how long a starting daemon waits for the first reading of
// the No-Log switch from PostgreSQL; No-Log is on until then.
const NoLogWait = 3 * time.Second

// followNoLog keeps nolog in step with the No-Log switch: the settings
// table when [postgres] is configured (every daemon on every node sharing
// the database follows it), else the existence of [log] nolog_file. Each
// change is logged in one line, naming nobody. With PostgreSQL, No-Log is
// on until the first reading and keeps its last known value while the
// database cannot be read: failing towards privacy.
func followNoLog(ctx context.Context, cfg *config.Common, nolog *logging.NoLog, log *slog.Logger) error {
	apply := func(on bool) {
		switch {
		case on == nolog.On():
		case on:
			// Logged before the switch: below Warn nothing passes under No-Log.
			log.Info("No-Log on: nothing about users is logged from now on")
			nolog.Set(true)
		default:
			nolog.Set(false)
			log.Info("No-Log off: logging users again")
		}
	}
	if cfg.Postgres.DSN == "" {
		nolog.Set(logging.FileOn(cfg.Log.NoLogFile))
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if cfg.Log.NoLogFile != "" {
						apply(logging.FileOn(cfg.Log.NoLogFile))
					}
				}
			}
		}()
		return nil
	}
	dsn, err := cfg.PostgresDSN()
	if err != nil {
		return err
	}
	nolog.Set(true)
	first := make(chan struct{})
	var once sync.Once
	ready := func() { once.Do(func() { close(first) }) }
	go func() {
		err := accounts.WatchNoLog(ctx, dsn, func(on bool) { apply(on); ready() }, func(error) { ready() }, log)
		if err != nil {
			log.Error("cannot follow the No-Log switch, No-Log stays on", "err", err)
			ready()
		}
	}()
	select {
	case <-first:
	case <-time.After(NoLogWait):
	case <-ctx.Done():
	}
	return nil
}
