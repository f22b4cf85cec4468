// Package accountdict answers Dovecot's questions about accounts: passdb
// and userdb (with just-in-time account creation), the quota dict and the
// last-login dict, all from the PostgreSQL account store.
//
// Dovecot 2.3 asks over the dict protocol (Lookup, Iterate, Commit). Its
// dict passdb is configured with password_key = passdb/%Ew"%Eu, so the key
// carries the cleartext password of the login attempt. It is used only to
// create an account at its first login; for an existing account the stored
// hash is returned and Dovecot checks the password itself.
//
// Dovecot 2.4 has no dict passdb: its Lua passdb and userdb ask Passdb,
// Create, Userdb and Users (logins.go) over HTTP (doveauth/authhttp), and
// give the password only to Create. Both versions go through the same
// rules (account, login, create, userdb below). Its quota_clone and
// last_login still come over the dict (Commit; DeliveryQuotaDict), which
// then answers nothing else (NoDictAuth).
package accountdict

import (
	"context"
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
	Credentials(ctx context.Context, address string) (accounts.Credentials, error)
	Create(ctx context.Context, n accounts.New) (*accounts.Account, bool, error)
	TouchLogin(ctx context.Context, address string, at time.Time) error
	UpdateQuota(ctx context.Context, address string, q accounts.Quota) error
	Each(ctx context.Context, fn func(*accounts.Account) error) error
	HasTombstone(ctx context.Context, tombstone []byte) (bool, error)
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
	// NoDictAuth refuses passdb and userdb lookups and iteration over the
	// dict ([doveauth] dict_auth = false), answering as for any key
	// doveauth does not serve; quota and last-login stay. On Dovecot 2.4
	// the Lua passdb asks over HTTP instead, and the dict socket is
	// reachable by every mail process (quota_clone and last_login use
	// it): without this a compromised IMAP session could read every
	// account's hash and list them all.
	NoDictAuth bool

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
// quota dict (2.3: proxy:<socket>:quota-delivery; 2.4: dict_proxy_name of
// quota_clone), which is how doveauth counts received messages without
// learning anything else about them.
//
// On 2.3 the quota dict sends each delivery as an increment of
// priv/quota/messages. On 2.4 quota_clone sends absolute values: it writes
// the mailbox's storage and message count in one transaction when the
// mailbox closes after a save, and LMTP opens and closes the mailbox once
// per message and recipient, so such a transaction is one delivery
// attempt. It counts as a delivery if it changes the stored values
// (accounts.Quota.Delivered): a delivery refused for quota (552) writes
// them unchanged. "The count went up" would not do: IMAP's expunges reach
// the dict only when the client closes the mailbox or up to 10 s later, so
// a delivery right after an expunge often lowers the count. (What this
// misses: a delivery whose values equal the stale stored ones, an
// unwritten expunge of one message of exactly its size; what it adds: a
// refused delivery while an expunge is unwritten. Both need an IMAP
// session and LMTP on one mailbox within seconds, the refusal a full one.)
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
	case s.NoDictAuth && (strings.HasPrefix(key, passdbPrefix) || strings.HasPrefix(key, userdbPrefix)):
		kind, result = KindOther, Failed
		err = errKey
	case strings.HasPrefix(key, passdbPrefix):
		kind = KindPassdb
		value, result, err = s.passdb(ctx, key[len(passdbPrefix):])
	case strings.HasPrefix(key, userdbPrefix):
		kind = KindUserdb
		value, result, err = s.userdbKey(ctx, key[len(userdbPrefix):])
	case key == quotaStorage || key == quotaMessages:
		kind = KindQuota
		value, result, err = s.quota(ctx, req.User, key == quotaStorage)
	default:
		kind, result = KindOther, Failed
		err = errKey
	}
	result, err = s.done(kind, result, err, start)
	found = err == nil && result != NotFound
	return value, found, err
}

// done counts a lookup of kind that began at start. An error without a
// result is the store's: it is logged and becomes "try again later".
func (s *Service) done(kind Kind, result Result, err error, start time.Time) (Result, error) {
	if err != nil && result == "" {
		result = TempFail
		s.Log.Warn("lookup failed", "kind", kind, "err", err)
		err = errUnavailable
	}
	s.Metrics.observe(kind, result, time.Since(start))
	return result, err
}

// passdb answers a login attempt; rest is <password>"<user>, both escaped
// with backslashes by Dovecot's %E. It is Dovecot 2.3's whole passdb: the
// account if it exists, else the account this login creates.
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
	cred, res, err := s.login(ctx, user, password)
	switch {
	case err != nil:
		return "", res, err
	case res == NotFound:
		return "", NotFound, nil
	}
	return passdbReply(cred.PasswordHash, res == Blocked), res, nil
}

// newAccount is an address that has no account and may get one: a first
// login's, in a domain doveauth serves.
type newAccount struct{ addr, local string }

// account finds the account of a login whose password is passwordLen bytes
// long: Found, Blocked, or NotFound. NotFound comes with the address to
// create when a first login could create it (the creation rules are
// create's).
func (s *Service) account(ctx context.Context, user string, passwordLen int) (accounts.Credentials, *newAccount, Result, error) {
	var none accounts.Credentials
	// An overlong password fails before anything else, for existing
	// accounts too: "not found" keeps Dovecot from hashing it to compare.
	if passwordLen > s.Accounts.PasswordMaxLength {
		s.Metrics.reject(RejectLong)
		return none, nil, NotFound, nil
	}
	addr, local, domain, err := accounts.Normalize(user)
	if err != nil {
		s.Metrics.reject(RejectMalformed)
		return none, nil, NotFound, nil
	}
	if !s.Mail.Serves(domain) {
		// Not ours: "not found" lets another passdb answer on a mixed server.
		return none, nil, NotFound, nil
	}
	cred, err := s.Store.Credentials(ctx, addr)
	switch {
	case err == nil && cred.Blocked:
		return cred, nil, Blocked, nil
	case err == nil:
		return cred, nil, Found, nil
	case errors.Is(err, accounts.ErrNotFound):
		return none, &newAccount{addr, local}, NotFound, nil
	}
	return none, nil, "", err
}

// login is a login with a password: the account if it exists, else the
// one this login creates (Created), if the creation rules allow it.
func (s *Service) login(ctx context.Context, user, password string) (accounts.Credentials, Result, error) {
	cred, n, res, err := s.account(ctx, user, len(password))
	if err != nil || n == nil {
		return cred, res, err
	}
	return s.create(ctx, n, password)
}

// create creates the account of a first login, or says why not: NotFound
// for a refusal (registration closed, local part, password length,
// tombstone), RateLimited with errTryLater over the creation rate. An
// account that a concurrent first login created comes back Found (or
// Blocked): Dovecot checks this password against that login's hash.
func (s *Service) create(ctx context.Context, n *newAccount, password string) (accounts.Credentials, Result, error) {
	var none accounts.Credentials
	if reason := s.refuseCreation(n.local, password); reason != "" {
		s.Metrics.reject(reason)
		s.Log.Info("account creation refused", "reason", reason, logging.User(n.addr))
		return none, NotFound, nil
	}
	tomb := s.TombstoneKey.Hash(n.addr)
	// A deleted account's address is refused before it costs a token and a
	// hash: otherwise each login attempt on it would hash a password. This
	// read is the cheap path; Store.Create checks again, authoritatively,
	// in the transaction that creates (a deletion may commit in between).
	// It sees a tombstone at any age, so one past tombstone_lifetime still
	// refuses until doveauth's hourly purge removes it.
	switch dead, err := s.Store.HasTombstone(ctx, tomb); {
	case err != nil:
		return none, "", err
	case dead:
		return s.tombstoned(n)
	}
	// The token is taken before hashing and given back unless this call
	// creates the account, so concurrent first logins of one address (IMAP
	// and SMTP at once) cost one token.
	if !s.creations.take(time.Now(), s.Accounts.CreateBurst, s.Accounts.CreatePerMinute) {
		s.Metrics.reject(RejectRateLimited)
		return none, RateLimited, errTryLater
	}
	created := false
	defer func() {
		if !created {
			s.creations.refund()
		}
	}()
	hash, err := passhash.Hash(s.Accounts.PasswordScheme, password)
	if err != nil {
		return none, "", err
	}
	acc, created, err := s.Store.Create(ctx, accounts.New{
		Address: n.addr, PasswordHash: hash, CountMessages: s.Accounts.CountMessages,
		Tombstone: tomb, TombstoneLifetime: s.Accounts.TombstoneLifetime.D(),
	})
	switch {
	case errors.Is(err, accounts.ErrTombstoned):
		return s.tombstoned(n)
	case err != nil:
		return none, "", err
	}
	cred := accounts.Credentials{PasswordHash: acc.PasswordHash, Blocked: acc.Blocked}
	switch {
	case !created && acc.Blocked:
		return cred, Blocked, nil
	case !created:
		// A concurrent first login won.
		return cred, Found, nil
	}
	s.Metrics.created.Inc()
	s.Log.Info("account created", logging.User(n.addr))
	return cred, Created, nil
}

// tombstoned refuses the creation of a deleted account's address.
func (s *Service) tombstoned(n *newAccount) (accounts.Credentials, Result, error) {
	s.Metrics.reject(RejectTombstone)
	s.Log.Info("account creation refused", "reason", "tombstone", logging.User(n.addr))
	return accounts.Credentials{}, NotFound, nil
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
	// with the row's deletion, refuses the address (create, and again in
	// Store.Create) while the mail is pending removal, whatever
	// tombstone_lifetime says.
	return ""
}

// passdbReply is the JSON object of a passdb answer, built by hand: it is
// on the path of every login.
func passdbReply(hash string, blocked bool) string {
	b := make([]byte, 0, len(hash)+64)
	b = append(b, `{"password":`...)
	b = appendJSONString(b, hash)
	if blocked {
		// "fail" rather than "nologin": Postfix's SASL client ignores
		// nologin, fail refuses every kind of login.
		b = append(b, `,"fail":"y","reason":"This account is blocked."`...)
	}
	return string(append(b, '}'))
}

// userdbKey answers the userdb dict key of user, escaped by Dovecot's %E.
func (s *Service) userdbKey(ctx context.Context, user string) (string, Result, error) {
	user, err := unescapePercentE(user)
	if err != nil {
		return "", Failed, err
	}
	u, res, err := s.userdb(ctx, user)
	if err != nil || res != Found {
		return "", res, err
	}
	b := make([]byte, 0, len(u.Home)+len(u.UID)+len(u.GID)+32)
	b = appendJSONString(append(b, `{"home":`...), u.Home)
	b = appendJSONString(append(b, `,"uid":`...), u.UID)
	b = appendJSONString(append(b, `,"gid":`...), u.GID)
	return string(append(b, '}')), Found, nil
}

// User is a userdb answer: where the account's mail lives and as whom
// Dovecot works on it.
type User struct {
	Home, UID, GID string
}

func (s *Service) userdb(ctx context.Context, user string) (User, Result, error) {
	addr, _, domain, err := accounts.Normalize(user)
	if err != nil || !s.Mail.Serves(domain) {
		return User{}, NotFound, nil
	}
	now := time.Now()
	if !s.userdbCache.has(addr, now) {
		gen := s.userdbCache.generation()
		if _, err := s.Store.Credentials(ctx, addr); err != nil {
			if errors.Is(err, accounts.ErrNotFound) {
				return User{}, NotFound, nil
			}
			return User{}, "", err
		}
		s.userdbCache.add(addr, gen, now)
	}
	return User{Home: filepath.Join(s.Accounts.MailboxesDir, addr), UID: s.Accounts.MailUser, GID: s.Accounts.MailGroup}, Found, nil
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
	cred, err := s.Store.Credentials(ctx, addr)
	switch {
	case errors.Is(err, accounts.ErrNotFound):
		s.Metrics.observe(KindSenderAccess, NotFound, time.Since(start))
		return socketmap.Result{}, nil
	case err != nil:
		s.Log.Warn("sender access lookup failed", "err", err)
		s.Metrics.observe(KindSenderAccess, TempFail, time.Since(start))
		return socketmap.Result{}, errUnavailable
	case cred.Blocked:
		s.Metrics.observe(KindSenderAccess, Blocked, time.Since(start))
		return socketmap.Result{Found: true, Value: "REJECT This account is blocked."}, nil
	}
	s.Metrics.observe(KindSenderAccess, Found, time.Since(start))
	return socketmap.Result{}, nil
}

// Iterate implements dict.Handler; it lists accounts for doveadm -A.
func (s *Service) Iterate(ctx context.Context, req dict.Iterate, emit func(key, value string) error) error {
	if req.Path != userdbPrefix || s.NoDictAuth {
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
		cloned   bool
		login    time.Time
		loginFor string
	)
	delivery := tx.Hello != nil && tx.Hello.DictName == DeliveryQuotaDict
	for _, op := range tx.Ops {
		c, err := counterOf(op)
		switch {
		case op.Key == quotaStorage && err == nil:
			q.Storage.Apply(c)
			hasQuota = true
		case op.Key == quotaMessages && err == nil:
			q.Messages.Apply(c)
			hasQuota = true
			switch {
			case !delivery:
			case op.Kind == dict.OpAtomicInc && op.Diff > 0:
				// 2.3's quota dict: the delivered messages.
				q.Received += op.Diff
			case op.Kind == dict.OpSet && tx.Hello.Major >= 4:
				// 2.4's quota_clone: a delivery attempt
				// (DeliveryQuotaDict). On 2.3 a set is a recount.
				cloned = true
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
	q.Delivered = cloned
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

// appendJSONString appends v as a JSON string. Hashes, homes and mail
// users are printable ASCII; the rest is escaped as JSON requires.
func appendJSONString(b []byte, v string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
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
