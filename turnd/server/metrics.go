package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Reasons an Allocate request is refused, the label of
// chatmail_turnd_allocations_refused_total. The first three are decided
// on every authenticated request (Allocate, Refresh, CreatePermission,
// ChannelBind): they count requests, the others count Allocate requests.
const (
	refusedMalformed    = "malformed"     // username not a credential of ours, or another realm
	refusedExpired      = "expired"       // the credential's expiry has passed
	refusedPassword     = "password"      // message integrity failed: a forged or mistyped password
	refusedUnusable     = "unusable"      // never issued, or its account is blocked or deleted
	refusedStore        = "store"         // the store could not be asked (PostgreSQL down): refused, never allowed
	refusedNotReady     = "not_ready"     // the schema is not in place yet
	refusedQuotaAccount = "quota_account" // max_allocations_per_account reached
	refusedQuotaIP      = "quota_ip"      // max_allocations_per_ip reached
	refusedRateIP       = "rate_ip"       // allocation_rate_per_ip exceeded
	refusedQuotaAll     = "quota_all"     // max_allocations reached
	refusedNoPort       = "no_port"       // no free relay port in the range
)

var refusedReasons = []string{refusedMalformed, refusedExpired, refusedPassword, refusedUnusable, refusedStore,
	refusedNotReady, refusedQuotaAccount, refusedQuotaIP, refusedRateIP, refusedQuotaAll, refusedNoPort}

// Reasons a CreatePermission or ChannelBind is refused, the label of
// chatmail_turnd_permissions_refused_total.
const (
	refusedPeer        = "peer"        // a forbidden peer address
	refusedPermissions = "permissions" // max_permissions_per_allocation reached
	refusedChannels    = "channels"    // max_channels_per_allocation reached
)

// Reasons a TCP connection is closed as it is accepted, the label of
// chatmail_turnd_tcp_refused_total.
const (
	tcpRefusedSlots = "slots" // max_tcp_connections reached
	tcpRefusedIP    = "ip"    // max_tcp_connections_per_ip reached
)

// Reasons a live allocation is ended by turnd, not by its client or its
// lifetime.
const (
	revokedExpired  = "expired"
	revokedUnusable = "unusable"
)

// Metrics are turnd's series. None is labelled with a user, credential or
// address.
type Metrics struct {
	active      prometheus.Gauge
	created     prometheus.Counter
	refused     *prometheus.CounterVec
	revoked     *prometheus.CounterVec
	permRefused *prometheus.CounterVec
	dropped     *prometheus.CounterVec
	lookups     *prometheus.CounterVec
	tcpRefused  *prometheus.CounterVec
	respDropped prometheus.Counter
}

// NewMetrics registers turnd's series on reg. The relayed bytes and
// packets are read from the relays at scrape time (relays.collect).
func NewMetrics(reg prometheus.Registerer, r *relays) *Metrics {
	m := &Metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chatmail_turnd_allocations_active",
			Help: "Allocations live now.",
		}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_turnd_allocations_created_total",
			Help: "Allocations created.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_allocations_refused_total",
			Help: "Requests refused, by reason: malformed, expired and password count every authenticated request, the others Allocate requests.",
		}, []string{"reason"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_allocations_revoked_total",
			Help: "Live allocations ended by turnd because their credential expired or became unusable (account blocked or deleted).",
		}, []string{"reason"}),
		permRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_permissions_refused_total",
			Help: "Peer addresses of CreatePermission and ChannelBind requests refused, by reason: peer (forbidden: loopback, private, this host...), permissions (max_permissions_per_allocation), channels (max_channels_per_allocation).",
		}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_dropped_packets_total",
			Help: "Relayed datagrams dropped, by reason: bandwidth (over max_bandwidth_per_allocation), peer (a forbidden peer address).",
		}, []string{"reason"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_credential_lookups_total",
			Help: "Credential checks, by where the answer came from: cache, store, or backoff (refused unasked: the store failed a moment ago).",
		}, []string{"source"}),
		tcpRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "chatmail_turnd_tcp_refused_total",
			Help: "TCP connections closed as they were accepted, by reason: slots (max_tcp_connections), ip (max_tcp_connections_per_ip).",
		}, []string{"reason"}),
		respDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chatmail_turnd_responses_dropped_total",
			Help: "UDP responses not sent to a source without an allocation, over unauthenticated_responses_per_prefix.",
		}),
	}
	for _, r := range refusedReasons {
		m.refused.WithLabelValues(r)
	}
	for _, r := range []string{revokedExpired, revokedUnusable} {
		m.revoked.WithLabelValues(r)
	}
	for _, r := range []string{"bandwidth", "peer"} {
		m.dropped.WithLabelValues(r)
	}
	for _, s := range []string{"cache", "store", "backoff"} {
		m.lookups.WithLabelValues(s)
	}
	for _, r := range []string{refusedPeer, refusedPermissions, refusedChannels} {
		m.permRefused.WithLabelValues(r)
	}
	for _, r := range []string{tcpRefusedSlots, tcpRefusedIP} {
		m.tcpRefused.WithLabelValues(r)
	}
	reg.MustRegister(m.active, m.created, m.refused, m.revoked, m.permRefused, m.dropped, m.lookups,
		m.tcpRefused, m.respDropped, &relayCollector{r})
	return m
}

var (
	relayedBytesDesc = prometheus.NewDesc("chatmail_turnd_relayed_bytes_total",
		"Payload bytes relayed, by direction: to_peer (client to peer), from_peer (peer to client).", []string{"direction"}, nil)
	relayedPacketsDesc = prometheus.NewDesc("chatmail_turnd_relayed_packets_total",
		"Datagrams relayed, by direction: to_peer, from_peer.", []string{"direction"}, nil)
)

// relayCollector reads the relays' traffic counters at scrape time, so
// that a relayed datagram costs an uncontended atomic add, not a shared
// counter's.
type relayCollector struct{ r *relays }

func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- relayedBytesDesc
	ch <- relayedPacketsDesc
}

func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.r.traffic()
	ch <- prometheus.MustNewConstMetric(relayedBytesDesc, prometheus.CounterValue, float64(t.toPeerBytes), "to_peer")
	ch <- prometheus.MustNewConstMetric(relayedBytesDesc, prometheus.CounterValue, float64(t.fromPeerBytes), "from_peer")
	ch <- prometheus.MustNewConstMetric(relayedPacketsDesc, prometheus.CounterValue, float64(t.toPeerPackets), "to_peer")
	ch <- prometheus.MustNewConstMetric(relayedPacketsDesc, prometheus.CounterValue, float64(t.fromPeerPackets), "from_peer")
}
