// Command chatmail-milter is the chatmail PGP-only Postfix milter.
//
//	chatmail-milter [-config PATH]          run the milter
//	chatmail-milter check [flags] < msg.eml print the reply the milter would give
package main

import (
	"context"
	"os"
	"time"

	"chatmail.dev/milter/server"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/mailpolicy"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	cfg := server.Defaults()
	daemon.Main(daemon.Spec{
		Name:         "milter",
		Section:      &cfg,
		Metrics:      func() string { return cfg.Metrics },
		DrainTimeout: 30 * time.Second,
		Run: func(ctx context.Context, env *daemon.Env) error {
			engine, err := mailpolicy.NewEngine(env.Config, &cfg.Config, env.Log)
			if err != nil {
				return err
			}
			ln, err := server.Listen(&cfg)
			if err != nil {
				return err
			}
			s := server.New(engine, env.Log, server.NewMetrics(env.Registry))
			s.EndTimeout = 2*cfg.DNSTimeout.D() + 5*time.Second
			env.Log.Info("entering serving loop", "listen", cfg.Listen)
			return s.Serve(ctx, ln)
		},
	})
}
