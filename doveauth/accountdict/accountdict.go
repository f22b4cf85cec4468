// Package accountdict answers Dovecot's dict lookups about accounts: passdb
// and userdb (with just-in-time account creation), the quota dict and the
// last-login dict, all from the PostgreSQL account store.
//
// Dovecot's dict passdb is configured with password_key = passdb/%Ew"%Eu, so
// the key carries the cleartext password of the login attempt. It is used
// only to create an account at its first login; for an existing account the
// stored hash is returned and Dovecot checks the password itself.
package accountdict

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"chatmail.dev/doveauth/passhash"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/socketmap"
)

// Store is what the service needs of the account store.
type Store interface {
	Get(ctx context.Context, address string) (*accounts.Account, error)
	Create(ctx context.Context, n accounts.New) (*accounts.Account, bool, error)
	TouchLogin(ctx context.Context, address string, at time.Time) error
	UpdateQuota(ctx context.Context, address string, q accounts.Quota) error
	Each(ctx context.Context, fn func(*accounts.Account) error) error
}

// Service implements dict.Handler.
type Service struct {
	Store    Store
	Mail     config.Mail
	Accounts config.Accounts
	Log      *slog.Logger
	Metrics  *Metrics
	// TombstoneKey keys the tombstones of deleted accounts, which block
	// creating their addresses anew.
	TombstoneKey accounts.TombstoneKey

	userdbCache existsCache
	creations   bucket
}

var (
	// localpartAlnum is the default rule: what Delta Chat makes.
	localpartAlnum = regexp.MustCompile(`^[a-z0-9]+$`)
	// localpartPunct allows single '.', '_' or '-' between letters and
	// digits (localpart_punctuation = true): never first, last or doubled.
	localpartPunct = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*$`)
)

// Key prefixes, as Dovecot sends them (it adds "shared/" or "priv/").
const (
	passdbPrefix    = "shared/passdb/"
	userdbPrefix    = "shared/userdb/"
	lastLoginPrefix = "shared/last-login/"
	quotaStorage    = "priv/quota/storage"
	quotaMessages   = "priv/quota/messages"
)

// DeliveryQuotaDict is the dict name Dovecot's LMTP service uses for the
// quota dict (proxy:<socket>:quota-delivery). Its message increments are
// deliveries, which is how doveauth counts received messages without
// learning anything else about them.
const DeliveryQuotaDict = "quota-delivery"

// errUnavailable is what Dovecot sees when the store cannot answer: a
// temporary failure, never a wrong answer.
var errUnavailable = errors.New("account store unavailable, try again later")

// errTryLater is the answer to a first login over the creation rate limit:
// a temporary failure (IMAP NO [UNAVAILABLE]), so the client retries.
var errTryLater = errors.New("too many new accounts, try again later")

// Refusals of keys doveauth does not serve. They go to Dovecot, which logs
// them beside the key, and name no key: a key names its user and, for
// passdb, carries the password (logging's rules).
var (
	errKey     = errors.New("doveauth does not serve this key")
	errIterate = errors.New("doveauth cannot iterate this path")
	errChange  = errors.New("doveauth cannot change this key")
)

// Lookup implements dict.Handler.
func (s *Service) Lookup(ctx context.Context, req dict.Lookup) (string, bool, error) {
	start := time.Now()
	var (
		kind   Kind
		result Result
		value  string
		found  bool
		err    error
	)
	switch key := req.Key; {
	case strings.HasPrefix(key, passdbPrefix):
		kind = KindPassdb
		value, result, err = s.passdb(ctx, key[len(passdbPrefix):])
	case strings.HasPrefix(key, userdbPrefix):
		kind = KindUserdb
		value, result, err = s.userdb(ctx, key[len(userdbPrefix):])
	case key == quotaStorage || key == quotaMessages:
		kind = KindQuota
		value, result, err = s.quota(ctx, req.User, key == quotaStorage)
	default:
		kind, result = KindOther, Failed
		err = errKey
	}
	if err != nil && result == "" {
		result = TempFail
		s.Log.Warn("lookup failed", "kind", kind, "err", err)
		err = errUnavailable
	}
	found = err == nil && result != NotFound
	s.Metrics.observe(kind, result, time.Since(start))
	return value, found, err
}

// passdb answers a login attempt; rest is <password>"<user>, both escaped
// with backslashes by Dovecot's %E.
func (s *Service) passdb(ctx context.Context, rest string) (string, Result, error) {
	// An overlong password fails before anything else, for existing
	// accounts too: "not found" keeps Dovecot from hashing it to compare.
	// The key is at least as long as the password it carries.
	if len(rest) > s.Accounts.PasswordMaxLength {
		if password, _, ok := splitPassdbKey(rest); !ok || len(password) > s.Accounts.PasswordMaxLength {
			s.Metrics.reject(RejectLong)
			return "", NotFound, nil
		}
	}
	password, user, ok := splitPassdbKey(rest)
	if !ok {
		return "", Failed, fmt.Errorf("malformed passdb key")
	}
	addr, local, domain, err := accounts.Normalize(user)
	if err != nil {
		s.Metrics.reject(RejectMalformed)
		return "", NotFound, nil
	}
	if !s.Mail.Serves(domain) {
		// Not ours: "not found" lets another passdb answer on a mixed server.
		return "", NotFound, nil
	}
	acc, err := s.Store.Get(ctx, addr)
	switch {
	case err == nil:
		if acc.Blocked {
			return passdbReply(acc, true), Blocked, nil
		}
		return passdbReply(acc, false), Found, nil
	case !errors.Is(err, accounts.ErrNotFound):
		return "", "", err
	}
	if reason := s.refuseCreation(local, password); reason != "" {
		s.Metrics.reject(reason)
		s.Log.Info("account creation refused", "reason", reason, logging.User(addr))
		return "", NotFound, nil
	}
	// The token is taken before hashing and given back unless this call
	// creates the account, so concurrent first logins of one address (IMAP
	// and SMTP at once) cost one token.
	if !s.creations.take(time.Now(), s.Accounts.CreateBurst, s.Accounts.CreatePerMinute) {
		s.Metrics.reject(RejectRateLimited)
		return "", RateLimited, errTryLater
	}
	created := false
	defer func() {
		if !created {
			s.creations.refund()
		}
	}()
	hash, err := passhash.Hash(s.Accounts.PasswordScheme, password)
	if err != nil {
		return "", "", err
	}
	acc, created, err = s.Store.Create(ctx, accounts.New{
		Address: addr, PasswordHash: hash, CountMessages: s.Accounts.CountMessages,
		Tombstone: s.TombstoneKey.Hash(addr), TombstoneLifetime: s.Accounts.TombstoneLifetime.D(),
	})
	if errors.Is(err, accounts.ErrTombstoned) {
		s.Metrics.reject(RejectTombstone)
		s.Log.Info("account creation refused", "reason", "tombstone", logging.User(addr))
		return "", NotFound, nil
	}
	if err != nil {
		return "", "", err
	}
	if !created {
		// A concurrent first login won; Dovecot checks this password
		// against the hash that login stored.
		return passdbReply(acc, acc.Blocked), Found, nil
	}
	s.Metrics.created.Inc()
	s.Log.Info("account created", logging.User(addr))
	return passdbReply(acc, false), Created, nil
}

// refuseCreation returns why an account may not be created, or "".
func (s *Service) refuseCreation(local, password string) Rejection {
	a := &s.Accounts
	switch {
	case a.Registration != "open":
		return RejectClosed
	case len(local) < a.LocalpartMinLength || len(local) > a.LocalpartMaxLength:
		return RejectLocalpart
	case !a.LocalpartPunctuation && !localpartAlnum.MatchString(local), a.LocalpartPunctuation && !localpartPunct.MatchString(local):
		return RejectLocalpart
	case len(password) < a.PasswordMinLength:
		return RejectShort
	case len(password) > a.PasswordMaxLength:
		return RejectLong
	}
	// Mail of a deleted account is never inherited: its tombstone, written
	// with the row's deletion, refuses the address in Store.Create while
	// the mail is pending removal, whatever tombstone_lifetime says.
	return ""
}

func passdbReply(acc *accounts.Account, blocked bool) string {
	r := map[string]string{"password": acc.PasswordHash}
	if blocked {
		// "fail" rather than "nologin": Postfix's SASL client ignores
		// nologin, fail refuses every kind of login.
		r["fail"] = "y"
		r["reason"] = "This account is blocked."
	}
	return mustJSON(r)
}

func (s *Service) userdb(ctx context.Context, user string) (string, Result, error) {
	user, err := unescapePercentE(user)
	if err != nil {
		return "", Failed, err
	}
	addr, _, domain, err := accounts.Normalize(user)
	if err != nil || !s.Mail.Serves(domain) {
		return "", NotFound, nil
	}
	now := time.Now()
	if !s.userdbCache.has(addr, now) {
		gen := s.userdbCache.generation()
		if _, err := s.Store.Get(ctx, addr); err != nil {
			if errors.Is(err, accounts.ErrNotFound) {
				return "", NotFound, nil
			}
			return "", "", err
		}
		s.userdbCache.add(addr, gen, now)
	}
	return mustJSON(map[string]string{
		"home": filepath.Join(s.Accounts.MailboxesDir, addr),
		"uid":  s.Accounts.MailUser,
		"gid":  s.Accounts.MailGroup,
	}), Found, nil
}

func (s *Service) quota(ctx context.Context, user string, storage bool) (string, Result, error) {
	addr, _, _, err := accounts.Normalize(user)
	if err != nil {
		return "", NotFound, nil
	}
	acc, err := s.Store.Get(ctx, addr)
	if errors.Is(err, accounts.ErrNotFound) {
		return "", NotFound, nil
	}
	if err != nil {
		return "", "", err
	}
	v := acc.MessageCount
	if storage {
		v = acc.StorageBytes
	}
	if v == nil {
		// Never counted: "not found" makes Dovecot count and set it.
		return "", NotFound, nil
	}
	return strconv.FormatInt(*v, 10), Found, nil
}

// SenderAccess answers Postfix's check_sasl_access lookups over socketmap
// (table name "blocked", key the SASL login) for every message, so that a
// blocked account's open SMTP session cannot go on sending.
func (s *Service) SenderAccess(ctx context.Context, name, key string) (socketmap.Result, error) {
	start := time.Now()
	if name != "blocked" {
		s.Metrics.observe(KindSenderAccess, Failed, time.Since(start))
		return socketmap.Result{}, fmt.Errorf("doveauth serves no socketmap table %q", name)
	}
	addr, _, _, err := accounts.Normalize(key)
	if err != nil {
		s.Metrics.observe(KindSenderAccess, NotFound, time.Since(start))
		return socketmap.Result{}, nil
	}
	acc, err := s.Store.Get(ctx, addr)
	switch {
	case errors.Is(err, accounts.ErrNotFound):
		s.Metrics.observe(KindSenderAccess, NotFound, time.Since(start))
		return socketmap.Result{}, nil
	case err != nil:
		s.Log.Warn("sender access lookup failed", "err", err)
		s.Metrics.observe(KindSenderAccess, TempFail, time.Since(start))
		return socketmap.Result{}, errUnavailable
	case acc.Blocked:
		s.Metrics.observe(KindSenderAccess, Blocked, time.Since(start))
		return socketmap.Result{Found: true, Value: "REJECT This account is blocked."}, nil
	}
	s.Metrics.observe(KindSenderAccess, Found, time.Since(start))
	return socketmap.Result{}, nil
}

// Iterate implements dict.Handler; it lists accounts for doveadm -A.
func (s *Service) Iterate(ctx context.Context, req dict.Iterate, emit func(key, value string) error) error {
	if req.Path != userdbPrefix {
		return errIterate
	}
	err := s.Store.Each(ctx, func(a *accounts.Account) error {
		return emit(userdbPrefix+a.Address, "")
	})
	s.Metrics.observe(KindIterate, resultOf(err), 0)
	return err
}

// Commit implements dict.Handler for the quota and last-login dicts.
func (s *Service) Commit(ctx context.Context, tx *dict.Tx) error {
	var (
		q        accounts.Quota
		hasQuota bool
		login    time.Time
		loginFor string
	)
	for _, op := range tx.Ops {
		c, err := counterOf(op)
		switch {
		case op.Key == quotaStorage && err == nil:
			q.Storage.Apply(c)
			hasQuota = true
		case op.Key == quotaMessages && err == nil:
			q.Messages.Apply(c)
			hasQuota = true
			if op.Kind == dict.OpAtomicInc && op.Diff > 0 && tx.Hello != nil && tx.Hello.DictName == DeliveryQuotaDict {
				q.Received += op.Diff
			}
		case strings.HasPrefix(op.Key, lastLoginPrefix) && op.Kind == dict.OpSet:
			secs, err := strconv.ParseInt(op.Value, 10, 64)
			if err != nil || secs < 0 {
				return errors.New("last-login value is not a Unix time")
			}
			// last_login_precision = ms, us or ns write larger units;
			// only the day is kept anyway.
			for secs > 1e11 {
				secs /= 1000
			}
			loginFor, login = op.Key[len(lastLoginPrefix):], time.Unix(secs, 0)
		default:
			return errChange
		}
	}
	var err error
	if hasQuota {
		if addr, _, _, nerr := accounts.Normalize(tx.User); nerr == nil {
			err = s.Store.UpdateQuota(ctx, addr, q)
		}
	}
	if err == nil && loginFor != "" {
		if addr, _, _, nerr := accounts.Normalize(loginFor); nerr == nil {
			err = s.Store.TouchLogin(ctx, addr, login)
		}
	}
	if err != nil {
		s.Log.Warn("commit failed", "err", err)
		err = errUnavailable
	}
	s.Metrics.commits.WithLabelValues(string(resultOf(err))).Inc()
	return err
}

func counterOf(op dict.Op) (accounts.Counter, error) {
	switch op.Kind {
	case dict.OpUnset:
		return accounts.Counter{Unset: true}, nil
	case dict.OpAtomicInc:
		return accounts.Counter{Add: op.Diff}, nil
	case dict.OpSet:
		v, err := strconv.ParseInt(op.Value, 10, 64)
		if err != nil {
			return accounts.Counter{}, err
		}
		return accounts.Counter{Set: &v}, nil
	}
	return accounts.Counter{}, fmt.Errorf("unknown op %c", op.Kind)
}

func resultOf(err error) Result {
	if err != nil {
		return TempFail
	}
	return OK
}

func mustJSON(v map[string]string) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // a map of strings always marshals
	}
	return string(b)
}

// splitPassdbKey splits <password>"<user> at the first unescaped quote and
// removes %E's backslash escapes from both parts.
func splitPassdbKey(rest string) (password, user string, ok bool) {
	var b strings.Builder
	for i := 0; i < len(rest); i++ {
		switch c := rest[i]; c {
		case '\\':
			i++
			if i == len(rest) {
				return "", "", false
			}
			b.WriteByte(rest[i])
		case '"':
			u, err := unescapePercentE(rest[i+1:])
			return b.String(), u, err == nil
		default:
			b.WriteByte(c)
		}
	}
	return "", "", false
}

func unescapePercentE(s string) (string, error) {
	if !strings.ContainsRune(s, '\\') {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
			if i == len(s) {
				return "", errors.New("trailing backslash")
			}
		}
		b.WriteByte(s[i])
	}
	return b.String(), nil
}
