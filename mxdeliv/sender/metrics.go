package sender

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the sender's series. No label names an address, a host, a
// domain or an IP. A nil *Metrics records nothing.
type Metrics struct {
	Recipients   *prometheus.CounterVec
	PostAnswers  *prometheus.CounterVec
	SMTPSessions *prometheus.CounterVec
	Duration     *prometheus.HistogramVec
	Size         prometheus.Histogram
	SMTPOnly     prometheus.Gauge
	Unreachable  prometheus.Gauge
	Busy         prometheus.Counter
	Sessions     prometheus.Gauge
}

// Results of a recipient, the label values of chatmail_mxdeliv_recipients_total.
var results = []string{"delivered", "temporary", "permanent"}

// NewMetrics registers the series on reg, every label value at zero.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_recipients_total",
			Help: "Recipients of outgoing deliveries by path (https, smtp, none: decided without a peer) and result.",
		}, []string{"via", "result"}),
		PostAnswers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_post_answers_total",
			Help: "POSTs to /mxdeliv by outcome: delivered, final (a rejection not retried over SMTP), fallback (SMTP tried), split and busy (SMTP tried once, /mxdeliv kept).",
		}, []string{"outcome"}),
		SMTPSessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_smtp_sessions_total",
			Help: "SMTP sessions to mail servers by result: answered (the peer replied to the recipients) or failed (connection, TLS, protocol).",
		}, []string{"result"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "chatmail_mxdeliv_delivery_duration_seconds",
			Help:    "Time to deliver to the recipients of one domain, by the path of the answer.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2.5, 12), // 10 ms to about 10 min
		}, []string{"via"}),
		Size: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "chatmail_mxdeliv_sent_message_size_bytes", // the receiver's is chatmail_mxdeliv_message_size_bytes
			Help:    "Size of the messages taken from Postfix.",
			Buckets: prometheus.ExponentialBuckets(1024, 4, 10), // 1 KiB to 256 MiB
		}),
		SMTPOnly: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_mxdeliv_smtp_only_hosts",
			Help: "Mail servers remembered as SMTP-only (expired entries count until swept).",
		}),
		Unreachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_mxdeliv_unreachable_addresses",
			Help: "Mail server addresses (and ports) not dialed for a while after their connect timed out (expired entries count until swept).",
		}),
		Busy: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_mxdeliv_destination_busy_total",
			Help: "Deliveries deferred because their destination had no free slot.",
		}),
		Sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_mxdeliv_lmtp_sessions",
			Help: "LMTP connections from Postfix currently open.",
		}),
	}
	reg.MustRegister(m.Recipients, m.PostAnswers, m.SMTPSessions, m.Duration, m.Size, m.SMTPOnly, m.Unreachable, m.Busy, m.Sessions)
	for _, v := range Vias {
		m.Duration.WithLabelValues(string(v))
		for _, r := range results {
			m.Recipients.WithLabelValues(string(v), r)
		}
	}
	for _, o := range outcomes {
		m.PostAnswers.WithLabelValues(string(o))
	}
	m.SMTPSessions.WithLabelValues("answered")
	m.SMTPSessions.WithLabelValues("failed")
	return m
}

func (m *Metrics) delivered(rs []Reply, d time.Duration) {
	if m == nil || len(rs) == 0 {
		return
	}
	for _, r := range rs {
		res := "delivered"
		switch {
		case r.Temporary():
			res = "temporary"
		case r.Permanent():
			res = "permanent"
		}
		m.Recipients.WithLabelValues(string(via(r)), res).Inc()
	}
	m.Duration.WithLabelValues(string(via(rs[0]))).Observe(d.Seconds())
}

func via(r Reply) Via {
	if r.Via == "" {
		return ViaNone
	}
	return r.Via
}

func (m *Metrics) posted(o outcome) {
	if m != nil {
		m.PostAnswers.WithLabelValues(string(o)).Inc()
	}
}

func (m *Metrics) smtpSession(err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.SMTPSessions.WithLabelValues("failed").Inc()
		return
	}
	m.SMTPSessions.WithLabelValues("answered").Inc()
}

func (m *Metrics) smtpOnlyHosts(n int) {
	if m != nil {
		m.SMTPOnly.Set(float64(n))
	}
}

func (m *Metrics) unreachable(n int) {
	if m != nil {
		m.Unreachable.Set(float64(n))
	}
}

func (m *Metrics) busy() {
	if m != nil {
		m.Busy.Inc()
	}
}

func (m *Metrics) size(n int64) {
	if m != nil {
		m.Size.Observe(float64(n))
	}
}

func (m *Metrics) session(d float64) {
	if m != nil {
		m.Sessions.Add(d)
	}
}
