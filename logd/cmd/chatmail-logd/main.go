// Command chatmail-logd is the log sink of Postfix (postlog_service_name)
// and Dovecot (log_path = syslog, /dev/log): it writes their lines to a file,
// and under No-Log only warnings, errors and start/stop lines, masked.
//
//	chatmail-logd [-config PATH]
package main

import (
	"chatmail.dev/logd/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	cfg := server.Defaults()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "logd",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
