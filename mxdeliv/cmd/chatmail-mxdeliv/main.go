// Command chatmail-mxdeliv receives mail from other chatmail servers over
// HTTPS (POST /mxdeliv), judges it by the milter's rules and delivers it
// to Dovecot's LMTP.
package main

import (
	"chatmail.dev/mxdeliv/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	cfg := server.Defaults()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "mxdeliv",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
