// Command chatmail-turnd is the chatmail TURN server: it relays the media
// of Delta Chat calls for holders of the credentials metadata-proxy issues.
package main

import (
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/turnd/server"
)

func main() {
	cfg := server.DefaultConfig()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "turnd",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
