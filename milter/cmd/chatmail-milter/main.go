// Command chatmail-milter is the chatmail PGP-only Postfix milter.
//
//	chatmail-milter [-config PATH]          run the milter
//	chatmail-milter check [flags] < msg.eml print the reply the milter would give
package main

import (
	"os"

	"chatmail.dev/milter/server"
	"chatmail.dev/sidecar/daemon"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		os.Exit(check(os.Args[2:], os.Stdin, os.Stdout, os.Stderr))
	}
	cfg := server.Defaults()
	daemon.Main(daemon.Spec[*server.Config]{
		Name:         "milter",
		Section:      &cfg,
		DrainTimeout: server.DrainTimeout,
		Run:          server.Run,
	})
}
