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
}

// Results of lookups and commits: the label values.
const (
	resultFound    = "found"
	resultNotFound = "notfound"
	resultError    = "error"
	resultOK       = "ok"
	resultRefused  = "refused"
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
			Help: "SETMETADATA transactions by result: ok, refused (a key or token not accepted), error (store unavailable).",
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
	reg.MustRegister(m.lookups, m.commits, m.tokens, m.queued)
	for k := KeyUnknown; k <= KeyDeviceToken; k++ {
		for _, r := range []string{resultFound, resultNotFound, resultError} {
			m.lookups.WithLabelValues(k.String(), r)
		}
	}
	for _, r := range []string{resultOK, resultRefused, resultError} {
		m.commits.WithLabelValues(r)
	}
	return m
}
