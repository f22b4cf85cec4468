package server

import (
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"time"

	"chatmail.dev/sidecar/config"
)

// Config is the [turnd] section. The settings turnd shares with
// metadata-proxy (secret file, realm, credential lifetime) are in [turn].
type Config struct {
	// ListenUDP and ListenTCP are the host:port addresses clients reach the
	// TURN server at; empty lists switch the transport off. Delta Chat uses
	// UDP only; TCP serves clients behind UDP-blocking firewalls.
	ListenUDP []string `toml:"listen_udp"`
	ListenTCP []string `toml:"listen_tcp"`
	// UDPSockets is how many sockets share each UDP address (SO_REUSEPORT),
	// each with its own read loop; 0 is one per CPU, at most 8.
	UDPSockets int `toml:"udp_sockets"`
	// RelayAddress is the IPv4 address written into allocations, the one
	// peers send to: the public address behind a NAT. Empty: the relay_bind
	// address, or else the first listen_udp address, when specific.
	RelayAddress string `toml:"relay_address"`
	// RelayBind is the IPv4 address relay sockets are bound to. Empty: the
	// first IPv4 listen_udp address (0.0.0.0 if none).
	RelayBind    string `toml:"relay_bind"`
	RelayPortMin int    `toml:"relay_port_min"`
	RelayPortMax int    `toml:"relay_port_max"`
	// AllowPeers lists CIDRs that may be relayed to although they are
	// forbidden by default (loopback, private, this host's own addresses...).
	AllowPeers []string `toml:"allow_peers"`
	// MaxAllocationsPerAccount, MaxAllocationsPerIP and MaxAllocations
	// bound the live allocations of one account (all its credentials), of
	// one source address (an IPv6 one counts by its /64) and of the server;
	// over them an Allocate gets 486 (Allocation Quota Reached).
	MaxAllocationsPerAccount int `toml:"max_allocations_per_account"`
	MaxAllocationsPerIP      int `toml:"max_allocations_per_ip"`
	MaxAllocations           int `toml:"max_allocations"`
	// AllocationRatePerIP is how many Allocate requests per minute one
	// source address may make (authenticated ones, refused or not), with
	// bursts of AllocationBurstPerIP; over it they get 486. 0 is no limit.
	AllocationRatePerIP  int `toml:"allocation_rate_per_ip"`
	AllocationBurstPerIP int `toml:"allocation_burst_per_ip"`
	// MaxPermissionsPerAllocation and MaxChannelsPerAllocation bound the
	// peer addresses one allocation may have a permission for and its
	// channels: a call needs a handful.
	MaxPermissionsPerAllocation int `toml:"max_permissions_per_allocation"`
	MaxChannelsPerAllocation    int `toml:"max_channels_per_allocation"`
	// MaxTCPConnections and MaxTCPConnectionsPerIP bound the TURN-over-TCP
	// connections of the server and of one source address; over them a
	// new connection is closed at once.
	MaxTCPConnections      int `toml:"max_tcp_connections"`
	MaxTCPConnectionsPerIP int `toml:"max_tcp_connections_per_ip"`
	// UnauthenticatedResponsesPerPrefix is how many responses per second
	// the UDP sockets send to the sources of one /24 (IPv6: /64) that have
	// no allocation (challenges, Binding answers, errors): a bound on what
	// a spoofed source can reflect at its owner. One address of it gets a
	// quarter of that, a tenth in Binding answers, so that a flood from one
	// address leaves its neighbours answered. 0 is no limit.
	UnauthenticatedResponsesPerPrefix int `toml:"unauthenticated_responses_per_prefix"`
	// StoreTimeout bounds a query of the account store: an uncached
	// Allocate waits for it in the read loop of its socket. After a failed
	// or timed-out query, uncached Allocates are refused without asking,
	// for StoreBackoff.
	StoreTimeout config.Duration `toml:"store_timeout"`
	StoreBackoff config.Duration `toml:"store_backoff"`
	// MaxBandwidthPerAllocation is the rate, in bytes per second, each
	// allocation may relay in each direction (to its peers, from its
	// peers); datagrams over it are dropped. 0 is no limit.
	MaxBandwidthPerAllocation int `toml:"max_bandwidth_per_allocation"`
	// RecheckInterval is how often the credentials of live allocations are
	// checked again (besides at every account change announced): an
	// allocation whose credential expired or whose account was blocked or
	// deleted ends then.
	RecheckInterval config.Duration `toml:"recheck_interval"`
	Metrics         string          `toml:"metrics"`
}

// DefaultConfig returns the defaults of the [turnd] section.
func DefaultConfig() Config {
	return Config{
		ListenUDP:                         []string{"0.0.0.0:3478"},
		ListenTCP:                         []string{"0.0.0.0:3478"},
		RelayPortMin:                      49152,
		RelayPortMax:                      65535,
		AllowPeers:                        []string{},
		MaxAllocationsPerAccount:          10,
		MaxAllocationsPerIP:               20,
		MaxAllocations:                    1000,
		AllocationRatePerIP:               60,
		AllocationBurstPerIP:              20,
		MaxPermissionsPerAllocation:       64,
		MaxChannelsPerAllocation:          64,
		MaxTCPConnections:                 1000,
		MaxTCPConnectionsPerIP:            16,
		UnauthenticatedResponsesPerPrefix: 100,
		StoreTimeout:                      config.Duration(250 * time.Millisecond),
		StoreBackoff:                      config.Duration(5 * time.Second),
		MaxBandwidthPerAllocation:         1_000_000,
		RecheckInterval:                   config.Duration(time.Minute),
		Metrics:                           "127.0.0.1:9731",
	}
}

// Validate implements config.Validator. It also fills in the relay
// addresses left empty.
func (c *Config) Validate() error {
	if len(c.ListenUDP) == 0 && len(c.ListenTCP) == 0 {
		return &config.Error{Key: "listen_udp", Msg: "listen_udp and listen_tcp are both empty"}
	}
	var firstV4 netip.Addr
	for _, l := range []struct {
		key   string
		addrs []string
	}{{"listen_udp", c.ListenUDP}, {"listen_tcp", c.ListenTCP}} {
		for _, a := range l.addrs {
			ap, err := netip.ParseAddrPort(a)
			if err != nil {
				return &config.Error{Key: l.key, Msg: fmt.Sprintf("%q: want ip:port ([ip]:port for IPv6)", a)}
			}
			if l.key == "listen_udp" && !firstV4.IsValid() && ap.Addr().Unmap().Is4() {
				firstV4 = ap.Addr().Unmap()
			}
		}
	}
	if c.UDPSockets < 0 || c.UDPSockets > 64 {
		return &config.Error{Key: "udp_sockets", Msg: "must be 0 (one per CPU) to 64"}
	}
	if c.RelayBind == "" {
		c.RelayBind = "0.0.0.0"
		if firstV4.IsValid() {
			c.RelayBind = firstV4.String()
		}
	}
	// pion relays over IPv4 sockets only ("udp4").
	bind, err := netip.ParseAddr(c.RelayBind)
	if err != nil || !bind.Unmap().Is4() {
		return &config.Error{Key: "relay_bind", Msg: fmt.Sprintf("%q is not an IPv4 address", c.RelayBind)}
	}
	if c.RelayAddress == "" {
		if bind.IsUnspecified() {
			return &config.Error{Key: "relay_address", Msg: "must be set when relay sockets bind all addresses: the public IPv4 address peers reach the relay at"}
		}
		c.RelayAddress = bind.Unmap().String()
	}
	ra, err := netip.ParseAddr(c.RelayAddress)
	if err != nil || !ra.Unmap().Is4() || ra.IsUnspecified() || ra.IsMulticast() {
		return &config.Error{Key: "relay_address", Msg: fmt.Sprintf("%q is not a unicast IPv4 address", c.RelayAddress)}
	}
	if c.RelayPortMin < 1 || c.RelayPortMax > 65535 || c.RelayPortMin > c.RelayPortMax {
		return &config.Error{Key: "relay_port_min", Msg: "relay_port_min and relay_port_max must be 1 to 65535, min <= max"}
	}
	if _, err := parsePrefixes(c.AllowPeers); err != nil {
		return &config.Error{Key: "allow_peers", Msg: err.Error()}
	}
	if c.MaxAllocations < 1 {
		return &config.Error{Key: "max_allocations", Msg: "must be at least 1"}
	}
	for _, k := range []struct {
		key string
		v   int
	}{
		{"max_allocations_per_account", c.MaxAllocationsPerAccount},
		{"max_allocations_per_ip", c.MaxAllocationsPerIP},
		{"max_permissions_per_allocation", c.MaxPermissionsPerAllocation},
		{"max_channels_per_allocation", c.MaxChannelsPerAllocation},
		{"max_tcp_connections", c.MaxTCPConnections},
		{"max_tcp_connections_per_ip", c.MaxTCPConnectionsPerIP},
	} {
		if k.v < 1 {
			return &config.Error{Key: k.key, Msg: "must be at least 1"}
		}
	}
	if c.AllocationRatePerIP < 0 {
		return &config.Error{Key: "allocation_rate_per_ip", Msg: "must be 0 (no limit) or more"}
	}
	if c.AllocationRatePerIP > 0 && c.AllocationBurstPerIP < 1 {
		return &config.Error{Key: "allocation_burst_per_ip", Msg: "must be at least 1"}
	}
	if c.UnauthenticatedResponsesPerPrefix < 0 {
		return &config.Error{Key: "unauthenticated_responses_per_prefix", Msg: "must be 0 (no limit) or more"}
	}
	if d := c.StoreTimeout.D(); d < 10*time.Millisecond || d > 5*time.Second {
		// The read loop of a socket waits for it: all its traffic stalls.
		return &config.Error{Key: "store_timeout", Msg: "must be 10ms to 5s"}
	}
	if d := c.StoreBackoff.D(); d < 0 || d > time.Minute {
		return &config.Error{Key: "store_backoff", Msg: "must be 0 to 1m"}
	}
	if c.MaxBandwidthPerAllocation < 0 {
		return &config.Error{Key: "max_bandwidth_per_allocation", Msg: "must be 0 (no limit) or more"}
	} else if c.MaxBandwidthPerAllocation > 0 && c.MaxBandwidthPerAllocation < 2*maxDatagram {
		return &config.Error{Key: "max_bandwidth_per_allocation", Msg: "must be 0 (no limit) or at least " + strconv.Itoa(2*maxDatagram)}
	}
	if c.RecheckInterval.D() < time.Second {
		return &config.Error{Key: "recheck_interval", Msg: "must be at least 1s"}
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }

// udpSockets is the number of sockets per UDP address.
func (c *Config) udpSockets() int {
	if c.UDPSockets > 0 {
		return c.UDPSockets
	}
	return min(runtime.GOMAXPROCS(0), 8)
}

// parsePrefixes parses CIDRs; a bare address is its own /32 or /128.
func parsePrefixes(ss []string) ([]netip.Prefix, error) {
	var ps []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Is4In6() {
			// ::ffff:127.0.0.0/104 means 127.0.0.0/8: peers are unmapped.
			if p.Bits() < 96 {
				return nil, fmt.Errorf("%q: an IPv4-mapped prefix needs at least /96", s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		ps = append(ps, p.Masked())
	}
	return ps, nil
}
