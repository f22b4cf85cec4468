package receiver

import (
	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/metrics"
)

// Results of a request, the label of chatmail_mxdeliv_requests_total: a
// closed set, naming no one.
const (
	ResultDelivered        = "delivered"
	ResultMethod           = "bad_method"
	ResultBusy             = "busy"
	ResultBadEnvelope      = "bad_envelope"
	ResultNotLocal         = "not_local"
	ResultTooLarge         = "too_large"
	ResultMalformed        = "malformed"
	ResultReadError        = "read_error"
	ResultPolicy           = "policy_refused"
	ResultPolicyTemp       = "policy_tempfail"
	ResultUnknownRcpt      = "unknown_recipient"
	ResultUnknownLimited   = "unknown_rate_limited"
	ResultStoreUnavailable = "store_unavailable"
	ResultLMTPUnavailable  = "lmtp_unavailable"
	ResultLMTPRefused      = "lmtp_refused"
	ResultLMTPPartial      = "lmtp_partial"
	ResultInternal         = "internal_error"
)

// Results lists every result, for pre-creating the series.
var Results = []string{ResultDelivered, ResultMethod, ResultBusy, ResultBadEnvelope, ResultNotLocal,
	ResultTooLarge, ResultMalformed, ResultReadError, ResultPolicy, ResultPolicyTemp, ResultUnknownRcpt,
	ResultUnknownLimited, ResultStoreUnavailable, ResultLMTPUnavailable, ResultLMTPRefused, ResultLMTPPartial,
	ResultInternal}

// Metrics are the receiver's series. No label names a user, an address or
// a peer.
type Metrics struct {
	Requests   *prometheus.CounterVec
	Verdicts   *prometheus.CounterVec
	Recipients prometheus.Counter
	Duration   prometheus.Histogram
	Size       prometheus.Histogram
	Active     prometheus.Gauge
}

// NewMetrics registers the series on reg, every label value at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_requests_total",
			Help: "POSTs to /mxdeliv answered, by result (delivered is HTTP 200, every other result is not).",
		}, []string{"result"}),
		Verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_verdicts_total",
			Help: "Decisions of the mail rules on messages, by reason (as chatmail_milter_verdicts_total, incoming).",
		}, []string{"reason"}),
		Recipients: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_delivered_recipients_total",
			Help: "Recipients Dovecot's LMTP accepted a message for.",
		}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatmail_mxdeliv_request_duration_seconds",
			Help:    "Time from the request's header to the answer: the body's upload, DKIM lookups and LMTP included.",
			Buckets: append(append([]float64{}, metrics.LatencyBuckets...), 10, 30, 60),
		}),
		Size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatmail_mxdeliv_message_size_bytes",
			Help:    "Size of the messages delivered.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10),
		}),
		Active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_mxdeliv_active_requests",
			Help: "POSTs to /mxdeliv in progress.",
		}),
	}
	reg.MustRegister(m.Requests, m.Verdicts, m.Recipients, m.Duration, m.Size, m.Active)
	for _, r := range Results {
		m.Requests.WithLabelValues(r)
	}
	for _, r := range mailpolicy.Reasons[mailpolicy.Incoming] {
		m.Verdicts.WithLabelValues(string(r))
	}
	return m
}
