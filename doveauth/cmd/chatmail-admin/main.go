// Command chatmail-admin manages accounts and the No-Log switch. It shows
// usage statistics and account metadata, never message content.
//
//	chatmail-admin [-config PATH] list
//	chatmail-admin [-config PATH] stats
//	chatmail-admin [-config PATH] block|unblock|delete ADDRESS
//	chatmail-admin [-config PATH] nolog on|off|status
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"text/tabwriter"
	"time"

	"chatmail.dev/doveauth/accountdict"
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
                       cannot be registered again (tombstone_lifetime)
  nolog on|off|status  switch No-Log for every daemon, at once
`

func main() {
	fs := flag.NewFlagSet("chatmail-admin", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage) }
	path := fs.String("config", daemon.DefaultConfigPath, "path of the chatmail config file")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(daemon.ExitConfig)
	}
	sec := adminConfig{Doveadm: "doveadm"}
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

// adminConfig is the [admin] section.
type adminConfig struct {
	// Doveadm ends a blocked account's open IMAP sessions (doveadm kick).
	Doveadm string `toml:"doveadm"`
	// DovecotConfig, if set, is passed to doveadm with -c.
	DovecotConfig string `toml:"dovecot_config"`
}

// kick ends the account's open Dovecot sessions, so a block takes effect at
// once rather than at the next login. An account without sessions is fine.
func (a *adminConfig) kick(addr string) error {
	args := []string{"kick", addr}
	if a.DovecotConfig != "" {
		args = append([]string{"-c", a.DovecotConfig}, args...)
	}
	out, err := exec.Command(a.Doveadm, args...).CombinedOutput()
	// doveadm kick exits 68 (EX_NOUSER) when the user has no sessions.
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 68) {
		return fmt.Errorf("doveadm kick: %v: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

func run(cfg *config.Common, adm *adminConfig, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, args := args[0], args[1:]
	if cmd == "nolog" {
		return nolog(cfg, args, out)
	}
	want := map[string]int{"list": 0, "stats": 0, "block": 1, "unblock": 1, "delete": 1}
	n, ok := want[cmd]
	if !ok || len(args) != n {
		return errUsage
	}
	if err := cfg.RequirePostgres(); err != nil {
		return err
	}
	dsn, err := cfg.PostgresDSN()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := accounts.Open(ctx, dsn, 2)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	var addr string
	if n == 1 {
		if addr, _, _, err = accounts.Normalize(args[0]); err != nil {
			return err
		}
	}
	switch cmd {
	case "list":
		return list(ctx, store, out)
	case "stats":
		st, err := store.Stats(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "accounts\t%d\nblocked\t%d\nactive_today\t%d\nactive_30_days\t%d\nstorage_bytes\t%d\nmessages\t%d\n",
			st.Accounts, st.Blocked, st.ActiveToday, st.Active30Days, st.StorageBytes, st.Messages)
		return nil
	case "block", "unblock":
		if err := store.SetBlocked(ctx, addr, cmd == "block"); err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		// New logins now fail and Postfix refuses the account's mail per
		// message (check_sasl_access); end the IMAP sessions too.
		if cmd == "block" {
			if err := adm.kick(addr); err != nil {
				return fmt.Errorf("%s: blocked, but open IMAP sessions were not ended: %w", addr, err)
			}
		}
	case "delete":
		// Block and kick, so nothing uses the account any more; delete the
		// row; wait out doveauth's userdb cache, after which no delivery
		// finds the user; then remove the mail. Until the mail is gone,
		// doveauth refuses to create the address anew (a leftover mail
		// directory blocks creation), so nobody inherits old mail.
		if err := store.SetBlocked(ctx, addr, true); err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		if err := adm.kick(addr); err != nil {
			return fmt.Errorf("%s: blocked, not deleted: open IMAP sessions were not ended: %w", addr, err)
		}
		// The tombstone keeps the address from being registered again,
		// by the abuser or by someone collecting its former owner's mail.
		key, err := accounts.LoadTombstoneKey(cfg.Accounts.TombstoneKeyFile)
		if err != nil {
			return fmt.Errorf("%s: blocked, not deleted: %w", addr, err)
		}
		if err := store.Delete(ctx, addr, key.Hash(addr)); err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		time.Sleep(accountdict.UserdbCacheTTL)
		if err := os.RemoveAll(filepath.Join(cfg.Accounts.MailboxesDir, addr)); err != nil {
			return fmt.Errorf("%s: account deleted, but its mail was not: %w", addr, err)
		}
	}
	fmt.Fprintf(out, "%s: %sed\n", addr, map[string]string{"block": "block", "unblock": "unblock", "delete": "delet"}[cmd])
	return nil
}

func list(ctx context.Context, store *accounts.Store, out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tSTORAGE\tCREATED\tLAST LOGIN\tBLOCKED")
	err := store.Each(ctx, func(a *accounts.Account) error {
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
	fmt.Fprintf(out, "nolog %s\n", state)
	return nil
}
