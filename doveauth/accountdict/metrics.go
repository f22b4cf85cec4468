package accountdict

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/metrics"
)

// Metrics are doveauth's Prometheus metrics. No label names a user.
type Metrics struct {
	lookups    *prometheus.CounterVec
	latency    *prometheus.HistogramVec
	created    prometheus.Counter
	rejections *prometheus.CounterVec
	commits    *prometheus.CounterVec
	// byKind holds the lookup metrics' children, resolved once: observe
	// runs on every lookup. Read-only after NewMetrics.
	byKind map[Kind]kindMetrics
}

type kindMetrics struct {
	latency prometheus.Observer
	results map[Result]prometheus.Counter
}

// Kind is what a lookup asked for, Result how it was answered, Rejection
// why a first login created no account: closed sets, the metrics' labels.
type (
	Kind      string
	Result    string
	Rejection string
)

const (
	KindPassdb       Kind = "passdb"
	KindCreate       Kind = "create"
	KindUserdb       Kind = "userdb"
	KindQuota        Kind = "quota"
	KindIterate      Kind = "iterate"
	KindSenderAccess Kind = "sender_access"
	KindOther        Kind = "other"

	Found       Result = "found"
	NotFound    Result = "notfound"
	Created     Result = "created"
	Blocked     Result = "blocked"
	TempFail    Result = "tempfail"
	RateLimited Result = "ratelimited"
	Failed      Result = "error"
	OK          Result = "ok"

	RejectClosed      Rejection = "registration_closed"
	RejectLocalpart   Rejection = "bad_localpart"
	RejectShort       Rejection = "short_password"
	RejectLong        Rejection = "long_password"
	RejectMalformed   Rejection = "malformed"
	RejectRateLimited Rejection = "rate_limited"
	RejectTombstone   Rejection = "tombstone"
)

var (
	lookupKinds   = []Kind{KindPassdb, KindCreate, KindUserdb, KindQuota, KindIterate, KindSenderAccess, KindOther}
	lookupResults = []Result{Found, NotFound, Created, Blocked, TempFail, RateLimited, Failed, OK}
	rejectReasons = []Rejection{RejectClosed, RejectLocalpart, RejectShort, RejectLong, RejectMalformed, RejectRateLimited, RejectTombstone}
)

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_doveauth_lookups_total",
			Help: "Dict lookups answered, by kind and result.",
		}, []string{"kind", "result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatmail_doveauth_lookup_duration_seconds",
			Help:    "Time to answer a dict lookup, by kind.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"kind"}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_doveauth_accounts_created_total",
			Help: "Accounts created at their first login.",
		}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_doveauth_creation_rejections_total",
			Help: "First logins that did not create an account, by reason.",
		}, []string{"reason"}),
		commits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_doveauth_commits_total",
			Help: "Quota and last-login transactions, by result.",
		}, []string{"result"}),
	}
	m.byKind = make(map[Kind]kindMetrics, len(lookupKinds))
	for _, k := range lookupKinds {
		km := kindMetrics{latency: m.latency.WithLabelValues(string(k)), results: make(map[Result]prometheus.Counter, len(lookupResults))}
		for _, r := range lookupResults {
			km.results[r] = m.lookups.WithLabelValues(string(k), string(r))
		}
		m.byKind[k] = km
	}
	for _, r := range rejectReasons {
		m.rejections.WithLabelValues(string(r))
	}
	m.commits.WithLabelValues(string(OK))
	m.commits.WithLabelValues(string(TempFail))
	reg.MustRegister(m.lookups, m.latency, m.created, m.rejections, m.commits)
	return m
}

func (m *Metrics) observe(kind Kind, result Result, d time.Duration) {
	km, ok := m.byKind[kind]
	c := km.results[result]
	if !ok || c == nil {
		// Not in the closed sets: a bug, counted all the same.
		m.lookups.WithLabelValues(string(kind), string(result)).Inc()
		return
	}
	c.Inc()
	if d > 0 {
		km.latency.Observe(d.Seconds())
	}
}

func (m *Metrics) reject(reason Rejection) { m.rejections.WithLabelValues(string(reason)).Inc() }
