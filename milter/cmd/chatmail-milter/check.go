package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"chatmail.dev/milter/server"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/mailpolicy"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

// check runs one message through the same policy code as the milter and
// prints the reply: exit 0 for accept, 1 for a refusal (4xx or 5xx), 2 for
// usage or config errors.
//
// Without -config, the chatmail domains are the domain of -from for
// -direction out and the domains of the -rcpt addresses for -direction in,
// so that the message is in scope; DKIM verification then uses DNS unless
// -no-dkim is given, and nothing is signed.
func check(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "chatmail config file (default: built-in defaults)")
	dir := fs.String("direction", "", "in (from another server) or out (submitted by a user)")
	from := fs.String("from", "", "envelope sender (MAIL FROM); empty for the null sender")
	auth := fs.String("auth", "", "SASL login for -direction out (default: -from)")
	noDKIM := fs.Bool("no-dkim", false, "do not verify DKIM signatures of incoming mail")
	verbose := fs.Bool("v", false, "log the decision and show header changes")
	var rcpts list
	fs.Var(&rcpts, "rcpt", "envelope recipient (repeatable, at least one)")
	if err := fs.Parse(args); err != nil {
		return daemon.ExitConfig
	}
	usage := func(msg string) int {
		fmt.Fprintf(stderr, "check: %s\n", msg)
		fs.Usage()
		return daemon.ExitConfig
	}
	if fs.NArg() > 0 {
		return usage(fmt.Sprintf("unexpected arguments %q", fs.Args()))
	}
	if len(rcpts) == 0 {
		return usage("give at least one -rcpt")
	}
	login := ""
	switch *dir {
	case "out":
		login = *auth
		if login == "" {
			login = *from
		}
		if login == "" {
			return usage("-direction out needs -from or -auth")
		}
	case "in":
		if *auth != "" {
			return usage("-auth only goes with -direction out")
		}
	default:
		return usage("-direction must be in or out")
	}

	cfg := server.Defaults()
	var common *config.Common
	if *path != "" {
		var err error
		if common, err = config.Load(*path, "milter", &cfg); err != nil {
			fmt.Fprintf(stderr, "check: %v\n", err)
			return daemon.ExitConfig
		}
	} else {
		c := config.Defaults()
		common = &c
		addrs := []string(rcpts)
		if *dir == "out" {
			addrs = []string{login}
		}
		for _, a := range addrs {
			_, d, _ := strings.Cut(a, "@")
			d = strings.ToLower(d)
			if d != "" && !common.Mail.Serves(d) {
				common.Mail.Domains = append(common.Mail.Domains, d)
			}
		}
	}
	if *noDKIM {
		cfg.VerifyDKIM = false
	}
	level := slog.LevelError
	if *verbose {
		level = slog.LevelDebug
	}
	engine, err := mailpolicy.NewEngine(common, &cfg.Config, logging.New(stderr, level, nil))
	if err != nil {
		fmt.Fprintf(stderr, "check: %v\n", err)
		return daemon.ExitConfig
	}

	txn := engine.Begin(login, *from)
	defer txn.Close()
	var refused *mailpolicy.Verdict
	accepted := 0
	for _, r := range rcpts {
		if v := txn.Rcpt(r); v != nil {
			refused = v
			if *verbose {
				fmt.Fprintf(stderr, "RCPT %s: %s\n", r, v.Reply)
			}
			continue
		}
		accepted++
	}
	v := refused
	if accepted > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 2*cfg.DNSTimeout.D()+5*time.Second)
		defer cancel()
		if v, err = mailpolicy.Replay(ctx, txn, stdin); err != nil {
			fmt.Fprintf(stderr, "check: reading message: %v\n", err)
			return daemon.ExitConfig
		}
	}
	if *verbose {
		for _, c := range v.Changes {
			if c.Value == "" {
				fmt.Fprintf(stderr, "delete header %s[%d]\n", c.Name, c.Index)
			} else {
				fmt.Fprintf(stderr, "change header %s[%d]: %s\n", c.Name, c.Index, c.Value)
			}
		}
		for _, f := range v.Add {
			fmt.Fprintf(stderr, "add header %s: %s\n", f.Name, f.Value)
		}
		fmt.Fprintf(stderr, "reason: %s\n", v.Reason)
	}
	fmt.Fprintln(stdout, v.Reply)
	if v.Reply.Accepted() {
		return daemon.ExitOK
	}
	return daemon.ExitFailure
}
