// Command doveauth serves Dovecot's passdb, userdb, quota and last-login
// dicts from the PostgreSQL account store, creating accounts at first login.
package main

import (
	"time"

	"chatmail.dev/doveauth/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	cfg := server.DefaultConfig()
	daemon.Main(daemon.Spec{
		Name:         "doveauth",
		Section:      &cfg,
		Metrics:      func() string { return cfg.Metrics },
		Run:          server.New(&cfg).Run,
		DrainTimeout: 10 * time.Second,
	})
}
