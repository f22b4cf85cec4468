// Command chatmail-mxdeliv receives mail from other chatmail servers over
// HTTPS (POST /mxdeliv), judges it by the milter's rules and delivers it
// to Dovecot's LMTP; with [mxdeliv] lmtp_listen it also sends: Postfix
// hands it outgoing mail over LMTP, which it POSTs to the recipient
// domain's /mxdeliv, falling back to SMTP.
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
