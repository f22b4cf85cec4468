// Package admin opens the account lifecycle (accounts.Lifecycle) for an
// administrator's front end: the chatmail-admin command now, the admin
// HTTP API later. Both get the same operations from Open; they differ only
// in how they are asked.
package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/logging"
)

// Config is the [admin] section.
type Config struct {
	// Doveadm ends a blocked account's open IMAP sessions (doveadm kick).
	Doveadm string `toml:"doveadm"`
	// DovecotConfig, if set, is passed to doveadm with -c.
	DovecotConfig string `toml:"dovecot_config"`
}

// DefaultConfig returns the defaults of the [admin] section.
func DefaultConfig() Config { return Config{Doveadm: "doveadm"} }

// Kick ends the account's open Dovecot sessions, so a block takes effect at
// once rather than at the next login. An account without sessions is fine.
func (c *Config) Kick(ctx context.Context, addr string) error {
	args := []string{"kick", addr}
	if c.DovecotConfig != "" {
		args = append([]string{"-c", c.DovecotConfig}, args...)
	}
	out, err := exec.CommandContext(ctx, c.Doveadm, args...).CombinedOutput()
	// doveadm kick exits 68 (EX_NOUSER) when the user has no sessions.
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && ee.ExitCode() == 68 {
		return nil
	}
	if err != nil {
		// doveadm may name the user, and other users or their IPs; the
		// error must name no one (it reaches the journal from scripts).
		out = bytes.ReplaceAll(bytes.TrimSpace(out), []byte(addr), []byte("[user]"))
		return fmt.Errorf("doveadm kick: %v: %s", err, logging.Mask(string(out)))
	}
	return nil
}

// Open connects to the account store, migrates it and returns the
// lifecycle over it, and the function that closes it.
func Open(ctx context.Context, cfg *config.Common, sec *Config) (*accounts.Lifecycle, func(), error) {
	store, err := accounts.OpenConfigured(ctx, cfg, 2)
	if err != nil {
		return nil, nil, err
	}
	if err := store.Migrate(ctx); err != nil {
		store.Close()
		return nil, nil, err
	}
	// The key of the tombstones that deletions leave; doveauth reads the
	// same file, and whichever comes first makes it.
	key, err := accounts.LoadTombstoneKey(cfg.Accounts.TombstoneKeyFile)
	if err != nil {
		store.Close()
		return nil, nil, err
	}
	return &accounts.Lifecycle{
		Store:      store,
		Key:        key,
		Kick:       sec.Kick,
		RemoveMail: accounts.RemoveMaildir(cfg.Accounts.MailboxesDir),
		ListMail:   accounts.ListMaildirs(cfg.Accounts.MailboxesDir),
	}, store.Close, nil
}

// NoLog returns the No-Log switch from the database, switching it first
// to *set if set is not nil. Every daemon configured with the same
// database follows within a second.
func NoLog(ctx context.Context, cfg *config.Common, set *bool) (bool, error) {
	store, err := accounts.OpenConfigured(ctx, cfg, 1)
	if err != nil {
		return false, err
	}
	defer store.Close()
	// The settings table comes with the migrations.
	if err := store.Migrate(ctx); err != nil {
		return false, err
	}
	if set != nil {
		if err := store.SetNoLog(ctx, *set); err != nil {
			return false, err
		}
	}
	return store.NoLog(ctx)
}
