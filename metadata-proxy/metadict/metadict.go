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
//     printable ASCII without spaces, at most 6000 bytes
//     (accounts.ValidDeviceToken; Delta Chat's are at most 5,472); an
//     account keeps 8, dropping the least recently set. A token not set
//     for 90 days expires.
//   - S /private/messagenew (Dovecot's push_notification Lua driver on
//     LMTP delivery) queues a push notification for each of the account's
//     tokens (accounts.QueuePushes: at most one pending per token, and
//     none within a token's cooldown after a push: see package push).
//     Only on a connection whose dict name is DeliveryDictName, the one
//     Dovecot's LMTP uses: from IMAP (SETMETADATA INBOX
//     /private/messagenew, the same dict key) it is dropped, or any user
//     could make the server POST to the gateway at will.
//   - U /private/devicetoken (SETMETADATA ... NIL) removes all of the
//     account's tokens: the one key holds every device's, and a client
//     that wants no more pushes must be able to say so. A device that
//     still wants pushes sets its token again at its next IMAP session.
//     (The reference relay ignores it.) U of any other key succeeds and
//     does nothing: nothing else is stored.
//   - What is not stored is dropped, and the commit still succeeds: S of
//     any other key, A (atomic increment), a token that is not valid,
//     messagenew from another dict name. Only the two keys above are
//     kept. Not failing is deliberate: Dovecot logs every failed commit as
//     an error ("Dict private transaction commit failed", and the client
//     gets NO [SERVERBUG]), so any account could write error lines into
//     the server's log without bound, No-Log or not. A dropped operation
//     is counted (commits_total{result="dropped"},
//     operations_dropped_total{reason}) and logged at Debug only. The
//     other operations of the transaction apply.
//   - A commit fails (F) only for trouble that passes: the store not yet
//     migrated or unavailable (and a transaction without a user, which
//     Dovecot does not send). Every operation is checked before the first
//     is applied; one that fails in PostgreSQL midway may have applied the
//     operations before, each harmless to repeat (Dovecot's transactions
//     hold one).
//
// TURN credentials when none is left to issue (a day full: see
// accounts.IssueTurnCredential): the answer is not found, and for
// ExhaustedBackoff afterwards, server-wide, no lookup tries to issue one
// (each try scans days of seconds, ~0.4 s of PostgreSQL under the
// account's row lock): an account's credential still valid beyond the
// reuse margin is handed out (accounts.TurnCredential, a plain read),
// others get not found without more.
//
// Who may announce new mail: the dict name DeliveryDictName is a claim the
// connecting process makes in its hello, not something checked. Anything
// that can connect to the socket (the processes of group dovecot: every
// imap and lmtp process, and whatever else runs as that group) can claim
// it, and name any user in the transaction. What it stops is IMAP clients:
// a SETMETADATA reaches the dict through an imap process, which says
// "metadata" as Dovecot's config tells it, whatever the client does. The
// boundary is the socket's permissions (socket_mode, socket_group): keep
// it to Dovecot's group.
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
	"sync/atomic"
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
	TurnCredential(ctx context.Context, address string, now time.Time) (int64, bool, error)
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

	// exhaustedUntil (Unix nanoseconds): until then no TURN credential
	// is issued, only handed out again.
	exhaustedUntil atomic.Int64
}

// ExhaustedBackoff is how long after the store said no TURN credential is
// left to issue (accounts.ErrTurnCredentialsExhausted) none is tried.
const ExhaustedBackoff = time.Minute

// Errors sent to Dovecot, which logs them: they name no one and no key.
var (
	errNotReady    = errors.New("metadata store not ready, try again later")
	errUnavailable = errors.New("metadata store unavailable, try again later")
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
	now := s.now()
	var expiry int64
	var err error
	if now.UnixNano() < s.exhaustedUntil.Load() {
		// None left a moment ago: hand out what the account has, and try
		// no issue, which would scan the full days again.
		var ok bool
		expiry, ok, err = s.Store.TurnCredential(ctx, user, now)
		if err == nil && !ok {
			s.Metrics.turnExhausted.Inc()
			return "", false, nil
		}
	} else {
		expiry, err = s.Store.IssueTurnCredential(ctx, user, now, s.Turn.Lifetime)
	}
	if errors.Is(err, accounts.ErrNotFound) {
		s.Log.Debug("no TURN credential: no such account, or blocked", logging.User(user))
		return "", false, nil
	}
	if errors.Is(err, accounts.ErrTurnCredentialsExhausted) {
		// Not found rather than a failure, which would fail the client's
		// whole GETMETADATA: it falls back to its default ICE servers.
		s.exhaustedUntil.Store(now.Add(ExhaustedBackoff).UnixNano())
		s.Metrics.turnExhausted.Inc()
		s.Log.Warn("no TURN credential left to issue: every second of the days a new one could expire on is taken (at most 86,400 a day); none issued for a minute")
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
	dropped, err := s.commit(ctx, tx)
	switch {
	case err == nil && dropped:
		s.Metrics.commits.WithLabelValues(resultDropped).Inc()
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

// drop counts and logs (at Debug: any account can repeat it at will) an
// operation that is not stored.
func (s *Service) drop(tx *dict.Tx, reason string, attrs ...any) {
	s.Metrics.dropped.WithLabelValues(reason).Inc()
	s.Log.Debug("metadata operation dropped", append([]any{"reason", reason, logging.User(tx.User)}, attrs...)...)
}

// commit applies a transaction; dropped says it dropped an operation.
func (s *Service) commit(ctx context.Context, tx *dict.Tx) (dropped bool, _ error) {
	// Check everything first: a failed commit changes nothing.
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
				s.drop(tx, dropToken, "length", len(op.Value))
				dropped = true
				continue
			}
			changes = append(changes, change{key: key, token: op.Value})
		case op.Kind == dict.OpSet && key == KeyMessageNew:
			if tx.Hello == nil || tx.Hello.DictName != DeliveryDictName {
				// An IMAP client can SETMETADATA this key too, and would
				// make us POST at will, without mail.
				s.drop(tx, dropMessageNew)
				dropped = true
				continue
			}
			changes = append(changes, change{key: key})
		default:
			// S of a key not stored, A: nothing else is kept.
			s.drop(tx, dropKey, "key", key.String())
			dropped = true
		}
	}
	if len(changes) == 0 || !s.Push {
		return dropped, nil
	}
	u := user(tx.User)
	if u == "" {
		return dropped, errNoUser
	}
	if !s.ready() {
		return dropped, errNotReady
	}
	now := s.now()
	queued, asked := false, false
	for _, c := range changes {
		var err error
		switch {
		case c.key == KeyDeviceToken && c.unset:
			err = s.Store.DeleteDeviceTokens(ctx, u)
			if err == nil {
				// Debug: any account can repeat it at will.
				s.Log.Debug("device tokens removed", logging.User(u))
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
			s.drop(tx, dropAccount)
			return true, nil
		}
		if err != nil {
			s.Log.Warn("storing metadata failed", logging.User(u), "err", err)
			return dropped, errUnavailable
		}
	}
	if queued && s.Queued != nil {
		s.Queued()
	}
	return dropped, nil
}
