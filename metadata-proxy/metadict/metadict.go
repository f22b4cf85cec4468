// Package metadict serves Dovecot's METADATA dictionary (IMAP GETMETADATA
// and SETMETADATA; Dovecot 2.3's mail_attribute_dict = proxy:SOCKET:metadata,
// 2.4's mail_attribute { dict proxy { ... } }) over the dict protocol, for
// what Delta Chat asks and sets, and nothing else.
//
// Lookups (L; the user is L's second field, else the hello's):
//
//   - /shared/vendor/deltachat/turn: host:port:EXPIRY:PASSWORD, a TURN
//     credential of the logged-in account (accounts.IssueTurnCredential:
//     one with more than 12 hours left is handed out again; each recorded
//     with its account, so turnd refuses those of blocked or deleted
//     accounts). No user, no account or a blocked one: not found.
//   - irohrelay, maxsmtprecipients, appversions: from the config; an
//     empty setting is not found. (/shared/comment and /shared/admin
//     never reach the dict: Dovecot answers them from its
//     mail_server_comment and mail_server_admin.)
//   - /private/devicetoken: the account's live tokens, space-joined in the
//     order first set, and an empty value when it has none (as the
//     reference relay). Only the account's own: the user of the lookup
//     chooses the tokens, so one account never sees another's.
//   - every other key: not found, never an error, so that one unknown key
//     does not fail a client's whole GETMETADATA.
//
// Transactions (B/S/U/C; the user is B's):
//
//   - S /private/devicetoken adds or refreshes a token. A token must be
//     printable ASCII without spaces, at most 8192 bytes
//     (accounts.ValidDeviceToken); an account keeps 16, dropping the least
//     recently set. A token not set for 90 days expires.
//   - S /private/messagenew (Dovecot's push_notification Lua driver on
//     LMTP delivery) queues a push notification for each of the account's
//     tokens (accounts.QueuePushes: at most one pending per token). Only
//     on a connection whose dict name is DeliveryDictName, the one
//     Dovecot's LMTP uses: from IMAP (SETMETADATA INBOX
//     /private/messagenew, the same dict key) it fails like any other key,
//     or any user could make the server POST to the gateway at will.
//   - U /private/devicetoken (SETMETADATA ... NIL) removes all of the
//     account's tokens: the one key holds every device's, and a client
//     that wants no more pushes must be able to say so. A device that
//     still wants pushes sets its token again at its next IMAP session.
//     (The reference relay ignores it.) U of any other key succeeds and
//     does nothing: nothing else is stored.
//   - S of any other key, and A, fail the whole commit (F): only the two
//     keys above can be set; we store nothing else. So does a token that
//     is not valid. A refused commit changes nothing: every operation is
//     checked before the first is applied. (One that fails in PostgreSQL
//     midway may have applied the operations before; each is harmless to
//     repeat, and Dovecot's transactions hold one.)
//
// Iterations (GETMETADATA DEPTH) are empty: nothing here is listed.
//
// With push off (no gateway configured) tokens are accepted and not
// stored, and new mail queues nothing. Until the store is migrated, and
// while PostgreSQL cannot answer, what needs it fails temporarily (F);
// the settings are served regardless.
package metadict

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/turncred"
)

// DeliveryDictName is the dict name of Dovecot's LMTP connections
// (deploy/dovecot: protocol lmtp's mail_attribute_dict; deploy/dovecot24:
// its dict_proxy_name), the only ones that may announce new mail.
const DeliveryDictName = "metadata-delivery"

// Store is what the service needs of the account store
// (*accounts.Store).
type Store interface {
	IssueTurnCredential(ctx context.Context, address string, now time.Time, lifetime time.Duration) (int64, error)
	SetDeviceToken(ctx context.Context, address, token string, now time.Time) error
	DeleteDeviceTokens(ctx context.Context, address string) error
	DeviceTokens(ctx context.Context, address string, now time.Time) ([]string, error)
	QueuePushes(ctx context.Context, address string, now time.Time) (int64, error)
}

// Turn is the TURN server whose credentials are handed out.
type Turn struct {
	Host     string // a DNS name or a bare IPv4 address
	Port     int
	Lifetime time.Duration
	Secret   []byte
}

// Service implements dict.Handler.
type Service struct {
	Store Store
	// Ready reports whether the store is migrated; nil: always.
	Ready func() bool
	Turn  Turn
	// The settings served; empty: not found.
	IrohRelay, AppVersions string
	MaxSMTPRecipients      int
	// Push stores tokens and queues notifications; off, tokens are
	// accepted and dropped.
	Push bool
	// Queued, if set, is called after a commit queued a notification:
	// it wakes the push worker.
	Queued  func()
	Log     *slog.Logger
	Metrics *Metrics
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Errors sent to Dovecot, which logs them: they name no one and no key.
var (
	errNotReady    = errors.New("metadata store not ready, try again later")
	errUnavailable = errors.New("metadata store unavailable, try again later")
	errReadOnly    = errors.New("only /private/devicetoken and /private/messagenew can be set")
	errNoUser      = errors.New("a transaction without a user")
)

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) ready() bool { return s.Ready == nil || s.Ready() }

// user returns the normalized account of a dict user field, or "".
func user(u string) string {
	norm, _, _, err := accounts.Normalize(u)
	if err != nil {
		return ""
	}
	return norm
}

// Lookup implements dict.Handler.
func (s *Service) Lookup(ctx context.Context, req dict.Lookup) (string, bool, error) {
	key := ParseKey(req.Key)
	v, found, err := s.lookup(ctx, key, user(req.User))
	result := resultNotFound
	switch {
	case err != nil:
		result = resultError
	case found:
		result = resultFound
	}
	s.Metrics.lookups.WithLabelValues(key.String(), result).Inc()
	return v, found, err
}

func (s *Service) lookup(ctx context.Context, key Key, user string) (string, bool, error) {
	switch key {
	case KeyIrohRelay:
		return s.IrohRelay, s.IrohRelay != "", nil
	case KeyAppVersions:
		return s.AppVersions, s.AppVersions != "", nil
	case KeyMaxSMTPRecipients:
		return strconv.Itoa(s.MaxSMTPRecipients), s.MaxSMTPRecipients > 0, nil
	case KeyTurn:
		return s.turn(ctx, user)
	case KeyDeviceToken:
		return s.deviceTokens(ctx, user)
	}
	return "", false, nil
}

func (s *Service) turn(ctx context.Context, user string) (string, bool, error) {
	if user == "" || len(s.Turn.Secret) == 0 {
		return "", false, nil
	}
	if !s.ready() {
		return "", false, errNotReady
	}
	expiry, err := s.Store.IssueTurnCredential(ctx, user, s.now(), s.Turn.Lifetime)
	if errors.Is(err, accounts.ErrNotFound) {
		s.Log.Debug("no TURN credential: no such account, or blocked", logging.User(user))
		return "", false, nil
	}
	if errors.Is(err, accounts.ErrTurnCredentialsExhausted) {
		// Not found rather than a failure, which would fail the client's
		// whole GETMETADATA: it falls back to its default ICE servers.
		s.Log.Warn("no TURN credential left to issue: every second of the days a new one could expire on is taken (at most 86,400 a day)")
		return "", false, nil
	}
	if err != nil {
		s.Log.Warn("issuing a TURN credential failed", logging.User(user), "err", err)
		return "", false, errUnavailable
	}
	pass := turncred.Password(s.Turn.Secret, turncred.Username(expiry))
	return turncred.Value(s.Turn.Host, s.Turn.Port, expiry, pass), true, nil
}

func (s *Service) deviceTokens(ctx context.Context, user string) (string, bool, error) {
	if user == "" {
		return "", false, nil
	}
	if !s.Push {
		return "", true, nil
	}
	if !s.ready() {
		return "", false, errNotReady
	}
	toks, err := s.Store.DeviceTokens(ctx, user, s.now())
	if err != nil {
		s.Log.Warn("reading device tokens failed", logging.User(user), "err", err)
		return "", false, errUnavailable
	}
	return strings.Join(toks, " "), true, nil
}

// Iterate implements dict.Handler: nothing is listed.
func (s *Service) Iterate(ctx context.Context, req dict.Iterate, emit func(key, value string) error) error {
	return nil
}

// Commit implements dict.Handler.
func (s *Service) Commit(ctx context.Context, tx *dict.Tx) error {
	err := s.commit(ctx, tx)
	switch {
	case err == nil:
		s.Metrics.commits.WithLabelValues(resultOK).Inc()
	case errors.Is(err, errUnavailable) || errors.Is(err, errNotReady):
		s.Metrics.commits.WithLabelValues(resultError).Inc()
	default:
		s.Metrics.commits.WithLabelValues(resultRefused).Inc()
	}
	return err
}

// change is one checked operation of a transaction.
type change struct {
	key   Key
	unset bool
	token string
}

func (s *Service) commit(ctx context.Context, tx *dict.Tx) error {
	// Check everything first: a refused commit changes nothing.
	changes := make([]change, 0, len(tx.Ops))
	for _, op := range tx.Ops {
		key := ParseKey(op.Key)
		switch {
		case op.Kind == dict.OpUnset && key == KeyDeviceToken:
			changes = append(changes, change{key: key, unset: true})
		case op.Kind == dict.OpUnset:
			// Nothing else is stored: nothing to remove.
		case op.Kind == dict.OpSet && key == KeyDeviceToken:
			if !accounts.ValidDeviceToken(op.Value) {
				s.Log.Info("device token refused", logging.User(tx.User), "length", len(op.Value))
				return accounts.ErrDeviceToken
			}
			changes = append(changes, change{key: key, token: op.Value})
		case op.Kind == dict.OpSet && key == KeyMessageNew:
			if tx.Hello == nil || tx.Hello.DictName != DeliveryDictName {
				// An IMAP client can SETMETADATA this key too, and would
				// make us POST at will, without mail.
				return errReadOnly
			}
			changes = append(changes, change{key: key})
		default:
			return errReadOnly
		}
	}
	if len(changes) == 0 || !s.Push {
		return nil
	}
	u := user(tx.User)
	if u == "" {
		return errNoUser
	}
	if !s.ready() {
		return errNotReady
	}
	now := s.now()
	queued, asked := false, false
	for _, c := range changes {
		var err error
		switch {
		case c.key == KeyDeviceToken && c.unset:
			err = s.Store.DeleteDeviceTokens(ctx, u)
			if err == nil {
				s.Log.Info("device tokens removed", logging.User(u))
			}
		case c.key == KeyDeviceToken:
			err = s.Store.SetDeviceToken(ctx, u, c.token, now)
			if err == nil {
				s.Metrics.tokens.Inc()
				s.Log.Debug("device token set", logging.User(u))
			}
		case c.key == KeyMessageNew && !asked:
			asked = true
			var n int64
			n, err = s.Store.QueuePushes(ctx, u, now)
			if err == nil && n > 0 {
				queued = true
				s.Metrics.queued.Add(float64(n))
				s.Log.Debug("push notifications queued", logging.User(u), "tokens", n)
			}
		}
		if errors.Is(err, accounts.ErrNotFound) {
			// The account went while its session lasted: nothing to keep.
			s.Log.Info("metadata of a missing account dropped", logging.User(u))
			return nil
		}
		if err != nil {
			s.Log.Warn("storing metadata failed", logging.User(u), "err", err)
			return errUnavailable
		}
	}
	if queued && s.Queued != nil {
		s.Queued()
	}
	return nil
}
