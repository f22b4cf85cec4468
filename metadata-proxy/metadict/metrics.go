package metadict

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Prefix starts every metric name of metadata-proxy, as daemon.Main names
// the panics and build_info series of the [metadata-proxy] daemon.
const Prefix = "chatmail_metadata_proxy_"

// Metrics are the dict's Prometheus metrics. No label names a user, an
// address or a token.
type Metrics struct {
	lookups *prometheus.CounterVec
	commits *prometheus.CounterVec
	tokens  prometheus.Counter
	queued  prometheus.Counter
	dropped *prometheus.CounterVec
	// turnExhausted counts turn lookups answered not found because no
	// credential was left to issue.
	turnExhausted prometheus.Counter
}

// Results of lookups and commits: the label values.
const (
	resultFound    = "found"
	resultNotFound = "notfound"
	resultError    = "error"
	resultOK       = "ok"
	resultRefused  = "refused"
	resultDropped  = "dropped"
)

// Why an operation of a transaction was dropped: the label values.
const (
	dropKey        = "key"        // S of a key not stored, or A
	dropToken      = "token"      // a device token that is not valid
	dropMessageNew = "messagenew" // new mail announced on another dict name than LMTP's
	dropAccount    = "account"    // the account is gone
)

// NewMetrics registers the metrics on reg (nil: a private registry, for
// tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: Prefix + "lookups_total",
			Help: "METADATA lookups by key (turn, irohrelay, maxsmtprecipients, appversions, comment, admin, devicetoken, other) and result (found, notfound, error).",
		}, []string{"key", "result"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: Prefix + "commits_total",
			Help: "SETMETADATA transactions by result: ok, dropped (succeeded, but dropped an operation: operations_dropped_total), refused (no user), error (store not ready or unavailable).",
		}, []string{"result"}),
		tokens: prometheus.NewCounter(prometheus.CounterOpts{
			Name: Prefix + "device_tokens_set_total",
			Help: "Device tokens set (new or refreshed).",
		}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: Prefix + "pushes_queued_total",
			Help: "Push notifications queued on new mail (one per token; none while one is pending).",
		}),
	}
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: Prefix + "operations_dropped_total",
		Help: "Operations of SETMETADATA transactions answered OK and not stored, by reason: key (a key not stored, or an increment), token (not a valid device token), messagenew (new mail from another dict name than LMTP's), account (the account is gone).",
	}, []string{"reason"})
	m.turnExhausted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: Prefix + "turn_exhausted_total",
		Help: "TURN lookups answered not found because no credential was left to issue (and, for a minute after, none was tried).",
	})
	reg.MustRegister(m.lookups, m.commits, m.tokens, m.queued, m.dropped, m.turnExhausted)
	for _, r := range []string{dropKey, dropToken, dropMessageNew, dropAccount} {
		m.dropped.WithLabelValues(r)
	}
	for k := KeyUnknown; k <= KeyDeviceToken; k++ {
		for _, r := range []string{resultFound, resultNotFound, resultError} {
			m.lookups.WithLabelValues(k.String(), r)
		}
	}
	for _, r := range []string{resultOK, resultDropped, resultRefused, resultError} {
		m.commits.WithLabelValues(r)
	}
	return m
}
