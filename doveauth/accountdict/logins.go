package accountdict

import (
	"context"
	"time"

	"chatmail.dev/sidecar/accounts"
)

// Dovecot 2.4 has no dict passdb: its Lua passdb and userdb
// (deploy/dovecot24/chatmail-auth.lua) ask doveauth over HTTP
// (doveauth/authhttp) instead, and keep the password out of every question
// but the one that creates an account. These are their answers; the rules
// are the dict's, for both Dovecot versions.

// Passdb finds the account of a login whose password is passwordLen bytes
// long: Found or Blocked with the stored hash, which Dovecot checks the
// password against, or NotFound (no such account: Create may make it). A
// password longer than password_max_length is NotFound for every account,
// so that it is never hashed. An error is "try again later".
func (s *Service) Passdb(ctx context.Context, user string, passwordLen int) (hash string, res Result, err error) {
	start := time.Now()
	cred, _, res, err := s.account(ctx, user, passwordLen)
	res, err = s.done(KindPassdb, res, err, start)
	if err == nil && res != NotFound {
		hash = cred.PasswordHash
	}
	return hash, res, err
}

// Create is a first login: it creates the account with this password if
// the creation rules allow (Created), or returns the account a concurrent
// login created (Found or Blocked; Dovecot checks the password against its
// hash), or refuses (NotFound). Over the creation rate it returns
// RateLimited and an error, "try again later", like the store's errors.
func (s *Service) Create(ctx context.Context, user, password string) (hash string, res Result, err error) {
	start := time.Now()
	cred, res, err := s.login(ctx, user, password)
	res, err = s.done(KindCreate, res, err, start)
	if err == nil && res != NotFound {
		hash = cred.PasswordHash
	}
	return hash, res, err
}

// Userdb answers a userdb lookup: Found with the account's home and mail
// user, or NotFound. An error is "try again later".
func (s *Service) Userdb(ctx context.Context, user string) (User, Result, error) {
	start := time.Now()
	u, res, err := s.userdb(ctx, user)
	res, err = s.done(KindUserdb, res, err, start)
	return u, res, err
}

// Users calls emit with the address of every account, for doveadm's
// commands over all users (-A, user '*'). An error of the store is "try
// again later".
func (s *Service) Users(ctx context.Context, emit func(addr string) error) error {
	err := s.Store.Each(ctx, func(a *accounts.Account) error { return emit(a.Address) })
	s.Metrics.observe(KindIterate, resultOf(err), 0)
	if err != nil {
		s.Log.Warn("listing accounts failed", "err", err)
		return errUnavailable
	}
	return nil
}
