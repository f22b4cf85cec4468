// Package daemon holds what every chatmail daemon's main does the same way:
// flags, config loading with exit code 2 on errors, logging with the No-Log
// switch, signal handling and the metrics listener.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/config"
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

// Env is what a daemon's run function gets.
type Env struct {
	Config   *config.Common
	Log      *slog.Logger
	NoLog    *logging.NoLog
	Registry *prometheus.Registry
}

// Spec describes a daemon to Main.
type Spec struct {
	Name    string // section name in the config file, e.g. "doveauth"
	Section any    // pointer to the daemon's section, holding its defaults
	// Metrics returns the metrics listen address from the loaded section.
	Metrics func() string
	// Run serves until ctx is cancelled (SIGTERM/SIGINT), then drains and
	// returns. A *config.Error return means exit code 2.
	Run func(ctx context.Context, env *Env) error
	// DrainTimeout bounds how long Run may take after ctx is cancelled
	// before the process exits anyway.
	DrainTimeout time.Duration
}

// Main parses flags, loads the config, runs the daemon and exits.
func Main(spec Spec) {
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

func run(spec Spec, path string) int {
	cfg, err := config.Load(path, spec.Name, spec.Section)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", spec.Name, err)
		return ExitConfig
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	nolog := &logging.NoLog{}
	nolog.Sync(cfg.Log.NoLogFile)
	go nolog.Watch(ctx, cfg.Log.NoLogFile, time.Second)
	log := logging.New(os.Stderr, logging.ParseLevel(cfg.Log.Level), nolog).With("daemon", spec.Name)

	reg := metrics.NewRegistry()
	ms, err := metrics.Listen(spec.Metrics(), reg, log)
	if err != nil {
		log.Error("cannot listen for metrics", "err", err)
		return ExitFailure
	}

	done := make(chan error, 1)
	go func() { done <- spec.Run(ctx, &Env{Config: cfg, Log: log, NoLog: nolog, Registry: reg}) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		log.Info("stopping: draining in-flight work")
		stop() // a second signal kills the process the default way
		drain := spec.DrainTimeout
		if drain == 0 {
			drain = 10 * time.Second
		}
		select {
		case err = <-done:
		case <-time.After(drain):
			err = errors.New("drain timed out")
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = ms.Shutdown(sctx) // best effort; the process is exiting
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
