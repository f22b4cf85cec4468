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
}

var (
	lookupKinds   = []string{"passdb", "userdb", "quota", "iterate", "sender_access", "other"}
	lookupResults = []string{"found", "notfound", "created", "blocked", "tempfail", "ratelimited", "error", "ok"}
	rejectReasons = []string{"registration_closed", "bad_localpart", "short_password", "long_password", "malformed", "rate_limited", "tombstone"}
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
	for _, k := range lookupKinds {
		m.latency.WithLabelValues(k)
		for _, r := range lookupResults {
			m.lookups.WithLabelValues(k, r)
		}
	}
	for _, r := range rejectReasons {
		m.rejections.WithLabelValues(r)
	}
	m.commits.WithLabelValues("ok")
	m.commits.WithLabelValues("tempfail")
	reg.MustRegister(m.lookups, m.latency, m.created, m.rejections, m.commits)
	return m
}

func (m *Metrics) observe(kind, result string, d time.Duration) {
	m.lookups.WithLabelValues(kind, result).Inc()
	if d > 0 {
		m.latency.WithLabelValues(kind).Observe(d.Seconds())
	}
}

func (m *Metrics) reject(reason string) { m.rejections.WithLabelValues(reason).Inc() }
