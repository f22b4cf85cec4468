// Command chatmail-metadata serves Dovecot's IMAP METADATA dict for Delta
// Chat (TURN credentials, iroh relay, limits, app versions, device tokens)
// from the PostgreSQL account store, and posts push notifications of new
// mail to the notification gateway.
package main

import (
	"chatmail.dev/metadata-proxy/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	cfg := server.DefaultConfig()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "metadata-proxy",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
