// Command doveauth serves Dovecot's passdb, userdb, quota and last-login
// dicts from the PostgreSQL account store, creating accounts at first login,
// Dovecot 2.4's Lua passdb and userdb over HTTP on a unix socket, and
// Postfix's socketmap lookup of blocked senders.
package main

import (
	"chatmail.dev/doveauth/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	cfg := server.DefaultConfig()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "doveauth",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
