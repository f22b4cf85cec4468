package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/turn/v4"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/turncred"
)

// Store is what turnd asks the account store (accounts.Store).
type Store interface {
	// TurnCredentialAccount returns the account the credential whose
	// username is expiry was issued to: accounts.ErrNotFound when it was
	// not issued, has expired at now, or its account was deleted or is
	// blocked; another error is trouble with the store.
	TurnCredentialAccount(ctx context.Context, expiry int64, now time.Time) (string, error)
}

// cacheTTL is how long the store's answer about a credential (its
// account, or that it is not usable) is taken without asking again.
// Account changes (block, unblock, delete) drop the cache at once; the
// TTL bounds what a lost notification could keep.
const cacheTTL = 30 * time.Second

// maxCached bounds the cache; past it, it starts afresh.
const maxCached = 100_000

// errStoreBackoff refuses the lookups of the store_backoff after a failed
// query: they are not asked.
var errStoreBackoff = errors.New("the account store failed a moment ago, not asked")

// answer is a cached answer of the store: the account, "" for not usable.
type answer struct {
	account string
	until   time.Time
}

// credentials checks TURN credentials: the username and password against
// the secret (pion's AuthHandler, on every authenticated request), and
// the credential's standing in the store (the QuotaHandler, on Allocate
// requests whose message integrity pion has verified, so a forged request
// never costs a query).
type credentials struct {
	secret  []byte
	realm   string
	store   Store
	timeout time.Duration // of a query
	backoff time.Duration // after a failed query, none for this long
	ready   func() bool
	rate    *limiter // Allocate requests per source IP
	m       *Metrics
	log     *slog.Logger

	mu        sync.Mutex
	watching  bool   // account changes are heard: caching is safe
	gen       uint64 // bumped at every drop, so an answer read before a change is not cached after it
	cache     map[int64]answer
	downUntil time.Time // the backoff after a failed query ends; zero: the last query succeeded
	probing   bool      // after the backoff, one query tries the store; the others are refused meanwhile
}

// auth is pion's AuthHandler: the key of a well-formed, unexpired
// credential of our realm. pion then checks the request's message
// integrity with it (a wrong password fails there: onAuth counts it).
func (c *credentials) auth(username, realm string, src net.Addr) ([]byte, bool) {
	if realm != c.realm {
		c.refuse(refusedMalformed, username, src)
		return nil, false
	}
	expiry, err := turncred.ParseUsername(username)
	if err != nil {
		c.refuse(refusedMalformed, username, src)
		return nil, false
	}
	if expiry <= time.Now().Unix() {
		c.refuse(refusedExpired, username, src)
		return nil, false
	}
	return turn.GenerateAuthKey(username, realm, turncred.Password(c.secret, username)), true
}

// onAuth is pion's OnAuth event: a verdict false is a message integrity
// that failed with the key auth returned.
func (c *credentials) onAuth(src, _ net.Addr, _, username, _, _ string, verdict bool) {
	if !verdict {
		c.refuse(refusedPassword, username, src)
	}
}

// allocate decides an authenticated Allocate request: the source's rate
// and quota, then the store must name the credential's account (an error
// refuses: TURN has no "try again later"), then the account's quota and
// the server's. local is the server address src reached.
func (c *credentials) allocate(r *relays, username string, src net.Addr, local netip.AddrPort) bool {
	if !c.ready() {
		c.refuse(refusedNotReady, username, src)
		return false
	}
	expiry, err := turncred.ParseUsername(username)
	if err != nil {
		c.refuse(refusedMalformed, username, src)
		return false
	}
	ip := sourceIP(src)
	if !c.rate.take(ip, time.Now()) {
		c.refuse(refusedRateIP, username, src)
		return false
	}
	if r.ipFull(ip) {
		c.refuse(refusedQuotaIP, username, src)
		return false
	}
	gen := c.generation() // before the lookup: a change during it is seen
	account, ok, err := c.lookup(context.Background(), expiry)
	if err != nil {
		if errors.Is(err, errStoreBackoff) {
			c.log.Debug("TURN credential not checked, the store failed a moment ago: allocation refused", logging.User(username))
		} else {
			c.log.Warn("cannot check a TURN credential, allocation refused", logging.User(username), "err", err)
		}
		c.refuse(refusedStore, username, src)
		return false
	}
	if !ok {
		c.refuse(refusedUnusable, username, src)
		return false
	}
	if reason := r.admit(pendKey{src: keyOf(src), local: local}, ip, account, gen); reason != "" {
		c.refuse(reason, username, src)
		return false
	}
	return true
}

func (c *credentials) refuse(reason, username string, src net.Addr) {
	c.m.refused.WithLabelValues(reason).Inc()
	if c.log.Enabled(context.Background(), slog.LevelDebug) {
		c.log.Debug("TURN request refused", "reason", reason, logging.User(username), logging.IP(addrString(src)))
	}
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// lookup asks the cache, then the store, within the query timeout: the
// credential's account and true, or false if it is not usable. After a
// failed query the store is not asked for the backoff (errStoreBackoff),
// then by one lookup at a time until one succeeds: while PostgreSQL hangs,
// a socket's read loop waits for it at most one timeout per backoff.
func (c *credentials) lookup(ctx context.Context, expiry int64) (string, bool, error) {
	now := time.Now()
	if expiry <= now.Unix() {
		return "", false, nil
	}
	c.mu.Lock()
	if a, ok := c.cache[expiry]; ok && now.Before(a.until) {
		c.mu.Unlock()
		c.m.lookups.WithLabelValues("cache").Inc()
		return a.account, a.account != "", nil
	}
	if now.Before(c.downUntil) || c.probing {
		c.mu.Unlock()
		c.m.lookups.WithLabelValues("backoff").Inc()
		return "", false, errStoreBackoff
	}
	probe := !c.downUntil.IsZero()
	c.probing = probe
	gen := c.gen
	c.mu.Unlock()
	qctx, cancel := context.WithTimeout(ctx, c.timeout)
	account, err := c.store.TurnCredentialAccount(qctx, expiry, now)
	cancel()
	c.m.lookups.WithLabelValues("store").Inc()
	if errors.Is(err, accounts.ErrNotFound) || (err == nil && account == "") {
		account, err = "", nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if probe {
		c.probing = false
	}
	if err != nil {
		if ctx.Err() == nil {
			c.downUntil = time.Now().Add(c.backoff)
		}
		return "", false, err
	}
	c.downUntil = time.Time{}
	if c.gen == gen && c.watching {
		if len(c.cache) >= maxCached {
			clear(c.cache)
		}
		c.cache[expiry] = answer{account: account, until: now.Add(cacheTTL)}
	}
	return account, account != "", nil
}

// generation counts the drops: an answer of the store read in one
// generation may be stale in a later one.
func (c *credentials) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// drop forgets every cached answer. A change notification names an
// address, not a credential, so all go.
func (c *credentials) drop(watching bool) {
	c.mu.Lock()
	c.gen++
	c.watching = watching
	clear(c.cache)
	c.mu.Unlock()
}
