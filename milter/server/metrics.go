package server

import (
	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/metrics"
)

// Metrics are the milter's own series. No label names a user, an address
// or a peer.
type Metrics struct {
	Verdicts     *prometheus.CounterVec
	RcptRefusals *prometheus.CounterVec
	Latency      *prometheus.HistogramVec
	Size         prometheus.Histogram
	Sessions     prometheus.Gauge
}

// NewMetrics registers the series on reg, every label value at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_milter_verdicts_total",
			Help: "Final decisions on messages by direction and reason.",
		}, []string{"direction", "reason"}),
		RcptRefusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_milter_rcpt_refusals_total",
			Help: "Recipients refused at RCPT, by reason.",
		}, []string{"reason"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatmail_milter_decision_duration_seconds",
			Help:    "Time from the end of the message to the milter's answer, DKIM lookups included.",
			Buckets: metrics.LatencyBuckets,
		}, []string{"direction"}),
		Size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatmail_milter_message_size_bytes",
			Help:    "Body size of the messages judged.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10), // 1 KiB to 256 MiB
		}),
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_milter_active_sessions",
			Help: "Milter connections from the MTA currently open.",
		}),
	}
	reg.MustRegister(m.Verdicts, m.RcptRefusals, m.Latency, m.Size, m.Sessions)
	for _, r := range mailpolicy.RcptReasons {
		m.RcptRefusals.WithLabelValues(string(r))
	}
	for d, reasons := range mailpolicy.Reasons {
		m.Latency.WithLabelValues(d.String())
		for _, r := range reasons {
			m.Verdicts.WithLabelValues(d.String(), string(r))
		}
	}
	return m
}
