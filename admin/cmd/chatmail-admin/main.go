// Command chatmail-admin manages accounts and the No-Log switch. It shows
// usage statistics and account metadata, never message content. The
// account operations are accounts.Lifecycle's, opened by package admin.
//
//	chatmail-admin [-config PATH] list
//	chatmail-admin [-config PATH] stats
//	chatmail-admin [-config PATH] block|unblock|delete ADDRESS
//	chatmail-admin [-config PATH] sweep
//	chatmail-admin [-config PATH] nolog on|off|status
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"chatmail.dev/admin"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
)

const usage = `usage: chatmail-admin [-config PATH] COMMAND
commands:
  list                 accounts with storage, creation and last-login day
  stats                totals: accounts, blocked, active, storage
  block ADDRESS        refuse the account's logins (mail is kept)
  unblock ADDRESS      allow them again
  delete ADDRESS       remove the account and all its mail; the address
                       cannot be registered again (tombstone_lifetime);
                       run it again to finish a deletion that failed
  sweep                remove mail that reappeared for deleted accounts
                       (a delivery under way as they went); run hourly
  nolog on|off|status  switch No-Log for every daemon, at once (in
                       PostgreSQL when [postgres] dsn is set, so every
                       node sharing it follows; else nolog_file)
`

func main() {
	fs := flag.NewFlagSet("chatmail-admin", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	path := fs.String("config", daemon.DefaultConfigPath, "path of the chatmail config file")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(daemon.ExitConfig)
	}
	sec := admin.DefaultConfig()
	cfg, err := config.Load(*path, "admin", &sec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-admin:", err)
		os.Exit(daemon.ExitConfig)
	}
	if err := run(cfg, &sec, fs.Args(), os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-admin:", err)
		if errors.Is(err, errUsage) {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(daemon.ExitConfig)
		}
		os.Exit(daemon.ExitFailure)
	}
}

var errUsage = errors.New("bad usage")

// done is what each account command prints on success.
var done = map[string]string{"block": "blocked", "unblock": "unblocked", "delete": "deleted"}

func run(cfg *config.Common, sec *admin.Config, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, args := args[0], args[1:]
	if cmd == "nolog" {
		return nolog(cfg, args, out)
	}
	want := map[string]int{"list": 0, "stats": 0, "sweep": 0, "block": 1, "unblock": 1, "delete": 1}
	if n, ok := want[cmd]; !ok || len(args) != n {
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lc, closeStore, err := admin.Open(ctx, cfg, sec)
	if err != nil {
		return err
	}
	defer closeStore()
	switch cmd {
	case "list":
		return list(ctx, lc, out)
	case "sweep":
		n, err := lc.Sweep(ctx)
		if err != nil {
			return fmt.Errorf("sweep: %w", err)
		}
		_, err = fmt.Fprintf(out, "swept %d\n", n)
		return err
	case "stats":
		st, err := lc.Stats(ctx)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(out, "accounts\t%d\nblocked\t%d\nactive_today\t%d\nactive_30_days\t%d\nstorage_bytes\t%d\nmessages\t%d\n",
			st.Accounts, st.Blocked, st.ActiveToday, st.Active30Days, st.StorageBytes, st.Messages)
		return err
	}
	op := map[string]func(context.Context, string) error{"block": lc.Block, "unblock": lc.Unblock, "delete": lc.Delete}[cmd]
	if err := op(ctx, args[0]); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	addr, _, _, err := accounts.Normalize(args[0])
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s: %s\n", addr, done[cmd])
	return err
}

func list(ctx context.Context, lc *accounts.Lifecycle, out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	if _, err := fmt.Fprintln(tw, "ADDRESS\tSTORAGE\tCREATED\tLAST LOGIN\tBLOCKED"); err != nil {
		return err
	}
	err := lc.Each(ctx, func(a *accounts.Account) error {
		storage, last := "-", "-"
		if a.StorageBytes != nil {
			storage = fmt.Sprint(*a.StorageBytes)
		}
		if a.LastLogin != nil {
			last = a.LastLogin.Format(time.DateOnly)
		}
		_, err := fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", a.Address, storage, a.CreatedAt.UTC().Format(time.DateOnly), last, a.Blocked)
		return err
	})
	if err != nil {
		return err
	}
	return tw.Flush()
}

func nolog(cfg *config.Common, args []string, out io.Writer) error {
	if len(args) != 1 {
		return errUsage
	}
	if cfg.Postgres.DSN != "" {
		return nologDB(cfg, args[0], out)
	}
	// Without PostgreSQL the switch is a file on this machine.
	f := cfg.Log.NoLogFile
	switch args[0] {
	case "on":
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			return err
		}
	case "off":
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			return err
		}
	case "status":
	default:
		return errUsage
	}
	_, err := os.Stat(f)
	state := "off"
	if err == nil {
		state = "on"
	}
	_, err = fmt.Fprintf(out, "nolog %s\n", state)
	return err
}

// nologDB switches No-Log in the database, where every daemon of every node
// sharing it follows the switch.
func nologDB(cfg *config.Common, arg string, out io.Writer) error {
	var set *bool
	switch arg {
	case "on", "off":
		on := arg == "on"
		set = &on
	case "status":
	default:
		return errUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	on, err := admin.NoLog(ctx, cfg, set)
	if err != nil {
		return fmt.Errorf("nolog: %w", err)
	}
	state := "off"
	if on {
		state = "on"
	}
	_, err = fmt.Fprintf(out, "nolog %s\n", state)
	return err
}
