package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/turncred"
)

// Options is what New needs besides the bound sockets.
type Options struct {
	Config *Config // validated
	Realm  string
	Secret []byte
	Store  Store
	// Ready reports whether the store's schema is in place; nil is always.
	Ready    func() bool
	Log      *slog.Logger
	Registry prometheus.Registerer
	Panics   prometheus.Counter // may be nil

	// tcpFirst and tcpIdleUnallocated replace tcpFirstMessage and
	// tcpIdleUnallocated when not 0 (tests).
	tcpFirst, tcpIdleUnallocated time.Duration
}

// Server is a running TURN server: pion's, with turnd's credential checks,
// peer policy, quotas, bandwidth and revocation around it.
type Server struct {
	pion    *turn.Server
	relays  *relays
	creds   *credentials
	policy  *peerPolicy
	own     []netip.Addr // addresses forbidden besides the interfaces'
	m       *Metrics
	log     *slog.Logger
	panics  prometheus.Counter
	every   time.Duration
	udp     []net.PacketConn
	tcp     []net.Listener
	recheck chan struct{}
	failed  chan error
	closing atomic.Bool
	closeMu sync.Mutex

	respLimit *limiter      // responses to sources without an allocation, per /24 or /64
	tcpSlots  chan struct{} // max_tcp_connections
	tcpPerIP  int           // max_tcp_connections_per_ip
	tcpFirst  time.Duration // tcpFirstMessage
	tcpIdle0  time.Duration // tcpIdleUnallocated
	tcpMu     sync.Mutex
	tcpByIP   map[netip.Addr]int
}

// Listen binds the configured UDP addresses (udp_sockets sockets each,
// sharing the port with SO_REUSEPORT, so that as many read loops serve
// it) and TCP addresses.
func Listen(cfg *Config) (udp []net.PacketConn, tcp []net.Listener, err error) {
	defer func() {
		if err != nil {
			for _, c := range udp {
				_ = c.Close() // the bind error is the one to report
			}
			for _, l := range tcp {
				_ = l.Close()
			}
			udp, tcp = nil, nil
		}
	}()
	lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}
	ctx := context.Background()
	for _, a := range cfg.ListenUDP {
		addr := a
		for i := range cfg.udpSockets() {
			c, err := lc.ListenPacket(ctx, "udp", addr)
			if err != nil {
				return udp, tcp, fmt.Errorf("listen_udp %s: %w", a, err)
			}
			udp = append(udp, c)
			if i == 0 {
				// Port 0 (tests): the others share the port the first got.
				addr = c.LocalAddr().String()
			}
		}
	}
	for _, a := range cfg.ListenTCP {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return udp, tcp, fmt.Errorf("listen_tcp %s: %w", a, err)
		}
		tcp = append(tcp, l)
	}
	return udp, tcp, nil
}

// New starts serving TURN on the sockets; Close stops it and closes them.
func New(o Options, udp []net.PacketConn, tcp []net.Listener) (*Server, error) {
	cfg := o.Config
	allow, err := parsePrefixes(cfg.AllowPeers)
	if err != nil {
		return nil, err
	}
	var own []netip.Addr
	if a, err := netip.ParseAddr(cfg.RelayAddress); err == nil {
		own = append(own, a.Unmap())
	}
	s := &Server{
		policy: newPeerPolicy(allow, own...), own: own,
		log: o.Log, panics: o.Panics, every: cfg.RecheckInterval.D(),
		recheck: make(chan struct{}, 1), failed: make(chan error, 1),
		tcpSlots: make(chan struct{}, cfg.MaxTCPConnections), tcpPerIP: cfg.MaxTCPConnectionsPerIP,
		tcpByIP: map[netip.Addr]int{}, tcpFirst: tcpFirstMessage, tcpIdle0: tcpIdleUnallocated,
	}
	if o.tcpFirst > 0 {
		s.tcpFirst = o.tcpFirst
	}
	if o.tcpIdleUnallocated > 0 {
		s.tcpIdle0 = o.tcpIdleUnallocated
	}
	if n := cfg.UnauthenticatedResponsesPerPrefix; n > 0 {
		s.respLimit = newLimiter(float64(n), float64(n))
	}
	s.relays = newRelays(cfg, s.policy)
	s.m = NewMetrics(o.Registry, s.relays)
	s.relays.m = s.m
	ready := o.Ready
	if ready == nil {
		ready = func() bool { return true }
	}
	s.creds = &credentials{
		secret: o.Secret, realm: o.Realm, store: o.Store, ready: ready,
		timeout: cfg.StoreTimeout.D(), backoff: cfg.StoreBackoff.D(),
		rate: newLimiter(float64(cfg.AllocationRatePerIP)/60, float64(cfg.AllocationBurstPerIP)),
		m:    s.m, log: o.Log, cache: map[int64]answer{},
	}
	sc := turn.ServerConfig{
		Realm:         o.Realm,
		LoggerFactory: pionLogs{o.Log},
		AuthHandler: func(username, realm string, src net.Addr) (key []byte, ok bool) {
			defer s.recoverPanic("auth", &ok)
			return s.creds.auth(username, realm, src)
		},
		QuotaHandler: func(username, _ string, src net.Addr) (ok bool) {
			defer s.recoverPanic("quota", &ok)
			return s.creds.allocate(s.relays, username, src)
		},
		EventHandler: turn.EventHandler{
			OnAuth: func(src, dst net.Addr, proto, username, realm, method string, verdict bool) {
				defer s.recoverPanic("auth event", nil)
				s.creds.onAuth(src, dst, proto, username, realm, method, verdict)
			},
			OnAllocationCreated: func(src, _ net.Addr, _, username, _ string, relay net.Addr, _ int) {
				defer s.recoverPanic("allocation event", nil)
				if ua, ok := relay.(*net.UDPAddr); ok {
					s.relays.attach(ua.Port, username, src)
				}
			},
			// A request of src failed: if it was an Allocate the quota
			// handler admitted, its reservation goes.
			OnAllocationError: func(src, _ net.Addr, _, _ string) {
				defer s.recoverPanic("allocation error event", nil)
				s.relays.release(keyOf(src))
			},
			OnPermissionCreated: func(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
				defer s.recoverPanic("permission event", nil)
				s.permit(relay, peer, true)
			},
			OnPermissionDeleted: func(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
				defer s.recoverPanic("permission event", nil)
				s.permit(relay, peer, false)
			},
			OnChannelCreated: func(_, _ net.Addr, _, _, _ string, relay, _ net.Addr, _ uint16) {
				defer s.recoverPanic("channel event", nil)
				s.channel(relay, true)
			},
			OnChannelDeleted: func(_, _ net.Addr, _, _, _ string, relay, _ net.Addr, _ uint16) {
				defer s.recoverPanic("channel event", nil)
				s.channel(relay, false)
			},
		},
		// pion reads datagrams into a buffer this size and drops larger ones.
		InboundMTU: maxDatagram,
	}
	perm := func(src net.Addr, peer net.IP) (ok bool) {
		defer s.recoverPanic("permission", &ok)
		ip, valid := netip.AddrFromSlice(peer)
		if !valid || !s.policy.allowed(ip) {
			s.m.permRefused.WithLabelValues(refusedPeer).Inc()
			return false
		}
		if reason := s.relays.admitPeer(src, ip); reason != "" {
			s.m.permRefused.WithLabelValues(reason).Inc()
			return false
		}
		return true
	}
	for _, c := range udp {
		wc := &watchedPacketConn{PacketConn: c, s: s}
		s.udp = append(s.udp, wc)
		sc.PacketConnConfigs = append(sc.PacketConnConfigs, turn.PacketConnConfig{
			PacketConn: wc, RelayAddressGenerator: s.relays, PermissionHandler: perm,
		})
	}
	for _, l := range tcp {
		wl := &tcpListener{Listener: l, s: s}
		s.tcp = append(s.tcp, wl)
		sc.ListenerConfigs = append(sc.ListenerConfigs, turn.ListenerConfig{
			Listener: wl, RelayAddressGenerator: s.relays, PermissionHandler: perm,
		})
	}
	srv, err := turn.NewServer(sc)
	if err != nil {
		return nil, err
	}
	s.pion = srv
	return s, nil
}

func (s *Server) permit(relay net.Addr, peer net.IP, on bool) {
	ua, ok := relay.(*net.UDPAddr)
	if !ok {
		return
	}
	ip, ok := netip.AddrFromSlice(peer)
	if !ok {
		return
	}
	if c := s.relays.get(ua.Port); c != nil {
		c.permit(ip, on)
	}
}

func (s *Server) channel(relay net.Addr, on bool) {
	if ua, ok := relay.(*net.UDPAddr); ok {
		if c := s.relays.get(ua.Port); c != nil {
			c.channel(on)
		}
	}
}

// recoverPanic, deferred in a callback from pion, turns a panic into a
// refusal (*ok = false) and a count, so that a bug refuses one request
// instead of ending every call the server relays.
func (s *Server) recoverPanic(what string, ok *bool) {
	v := recover()
	if v == nil {
		return
	}
	if ok != nil {
		*ok = false
	}
	if s.panics != nil {
		s.panics.Inc()
	}
	s.log.Error("panic in a TURN callback", "in", what, "panic", fmt.Sprint(v))
}

// UDPAddrs and TCPAddrs are the bound addresses.
func (s *Server) UDPAddrs() []net.Addr {
	var as []net.Addr
	for _, c := range s.udp {
		as = append(as, c.LocalAddr())
	}
	return as
}

func (s *Server) TCPAddrs() []net.Addr {
	var as []net.Addr
	for _, l := range s.tcp {
		as = append(as, l.Addr())
	}
	return as
}

// Allocations is the number of live allocations.
func (s *Server) Allocations() int { return s.relays.count() }

// AccountChanged implements accounts.ChangeHandler: an account was
// blocked, unblocked or deleted. The cache goes, and every live
// allocation's credential is checked again at once.
func (s *Server) AccountChanged(string) {
	s.creds.drop(true)
	s.triggerRecheck()
}

// WatchingChanges implements accounts.ChangeHandler. While changes are
// not heard nothing is cached; when they are again, live allocations are
// checked (a change may have been missed).
func (s *Server) WatchingChanges(on bool) {
	s.creds.drop(on)
	if on {
		s.triggerRecheck()
	}
}

func (s *Server) triggerRecheck() {
	select {
	case s.recheck <- struct{}{}:
	default: // one is pending: it will see this change too
	}
}

// Serve checks live allocations at every account change and every
// recheck_interval until ctx ends (nil) or a socket fails (its error).
func (s *Server) Serve(ctx context.Context) error {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-s.failed:
			return err
		case <-t.C:
			s.policy.refreshOwn(s.own...)
		case <-s.recheck:
		}
		s.recheckAll(ctx)
	}
}

// recheckAll ends the allocations whose credential expired or became
// unusable. A store error leaves them be: an outage of PostgreSQL does
// not cut the calls in progress (new allocations are refused meanwhile,
// and Refresh requests still need an unexpired credential).
func (s *Server) recheckAll(ctx context.Context) {
	if !s.creds.ready() {
		return
	}
	now := time.Now()
	for expiry, conns := range s.relays.byExpiry() {
		if ctx.Err() != nil {
			return
		}
		reason := revokedExpired
		if expiry > now.Unix() {
			_, ok, err := s.creds.lookup(ctx, expiry)
			if errors.Is(err, errStoreBackoff) {
				return // the store failed a moment ago, and that was said
			}
			if err != nil {
				s.log.Warn("cannot check the credentials of live allocations, they go on until the next check", "err", err)
				return
			}
			if ok {
				continue
			}
			reason = revokedUnusable
		}
		for _, c := range conns {
			_ = c.Close() // ending it is the point; a close error changes nothing
		}
		s.m.revoked.WithLabelValues(reason).Add(float64(len(conns)))
		s.log.Info("ended allocations of a credential", "reason", reason, "count", len(conns), logging.User(turncred.Username(expiry)))
	}
}

// Close stops the server: every allocation ends, the sockets close.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closing.Swap(true) {
		return nil
	}
	return s.pion.Close()
}

// watchedPacketConn reports a TURN socket's read failure: pion's read loop
// ends silently on one, and the daemon would serve nothing on it. It also
// limits the responses to sources without an allocation.
type watchedPacketConn struct {
	net.PacketConn
	s *Server
}

func (c *watchedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, a, err := c.PacketConn.ReadFrom(p)
	if err != nil && !c.s.closing.Load() {
		c.s.fail(fmt.Errorf("udp socket: %w", err))
	}
	return n, a, err
}

// WriteTo drops STUN responses (not indications, not ChannelData: what is
// relayed passes untouched) to a source without an allocation over
// unauthenticated_responses_per_prefix: a 20-byte Allocate without
// credentials gets a 401 of about 72 bytes, a Binding request twice its
// size, so a spoofed source could have turnd reflect more at its owner
// than the spoofer sends.
func (c *watchedPacketConn) WriteTo(p []byte, a net.Addr) (int, error) {
	if c.s.respLimit != nil && len(p) >= 20 && p[0]&0xc0 == 0 && !stunIndication(p) {
		if ua, ok := a.(*net.UDPAddr); ok {
			ap := ua.AddrPort()
			if !c.s.relays.hasAllocation(srcKey{ap: ap}) && !c.s.respLimit.take(sourcePrefix(ap), time.Now()) {
				c.s.m.respDropped.Inc()
				return len(p), nil // as a network loses it
			}
		}
	}
	return c.PacketConn.WriteTo(p, a)
}

// stunIndication reports whether the STUN message p is an indication: its
// class bits (0x0110 of the type) are 01.
func stunIndication(p []byte) bool {
	return p[0]&0x01 == 0 && p[1]&0x10 != 0
}

func (s *Server) fail(err error) {
	select {
	case s.failed <- err:
	default:
	}
}

const (
	// tcpFirstMessage is how long a new TCP connection has to send its
	// first complete STUN message.
	tcpFirstMessage = 5 * time.Second
	// tcpIdleUnallocated closes a TCP connection without an allocation
	// that sent nothing for this long.
	tcpIdleUnallocated = 30 * time.Second
	// tcpIdleTimeout closes a TURN-over-TCP connection with an allocation
	// that sent nothing for this long: an allocation is refreshed well
	// within its 10-minute default lifetime, permissions every 5 minutes.
	tcpIdleTimeout = 12 * time.Minute
)

var errNotSTUN = errors.New("a TCP connection did not start with a STUN message")

// tcpListener bounds the TCP connections (max_tcp_connections, of all TCP
// listeners, and max_tcp_connections_per_ip; over them a new one is
// closed at once), times out idle ones, and keeps accepting through
// temporary errors (pion's accept loop would end at the first).
type tcpListener struct {
	net.Listener
	s *Server
}

func (l *tcpListener) Accept() (net.Conn, error) {
	delay := 5 * time.Millisecond
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if l.s.closing.Load() {
				return nil, err
			}
			if errors.Is(err, net.ErrClosed) {
				l.s.fail(fmt.Errorf("tcp listener: %w", err))
				return nil, err
			}
			// EMFILE and the like: wait, as net/http does.
			time.Sleep(delay)
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		if tc := l.s.admitTCP(c); tc != nil {
			return tc, nil
		}
		_ = c.Close() // over a bound: refused
	}
}

// admitTCP takes a slot and the source's share for c, or returns nil.
func (s *Server) admitTCP(c net.Conn) *tcpConn {
	select {
	case s.tcpSlots <- struct{}{}:
	default:
		s.m.tcpRefused.WithLabelValues(tcpRefusedSlots).Inc()
		return nil
	}
	ip := sourceIP(c.RemoteAddr())
	s.tcpMu.Lock()
	if s.tcpByIP[ip] >= s.tcpPerIP {
		s.tcpMu.Unlock()
		<-s.tcpSlots
		s.m.tcpRefused.WithLabelValues(tcpRefusedIP).Inc()
		return nil
	}
	s.tcpByIP[ip]++
	s.tcpMu.Unlock()
	release := func() {
		s.tcpMu.Lock()
		if s.tcpByIP[ip]--; s.tcpByIP[ip] <= 0 {
			delete(s.tcpByIP, ip)
		}
		s.tcpMu.Unlock()
		<-s.tcpSlots
	}
	return &tcpConn{Conn: c, s: s, key: keyOf(c.RemoteAddr()), firstBy: time.Now().Add(s.tcpFirst), release: release}
}

// tcpConn is a TURN-over-TCP connection: its first complete STUN message
// must arrive within tcpFirstMessage of the accept; then it may be idle
// tcpIdleUnallocated until it has an allocation, tcpIdleTimeout after.
// pion reads it from one goroutine.
type tcpConn struct {
	net.Conn
	s         *Server
	key       srcKey
	firstBy   time.Time
	hdr       [20]byte // the first message's header, as it arrives
	seen      int      // bytes of the first message seen
	need      int      // its length, once the header is in
	first     bool     // the first message is complete
	allocated bool
	once      sync.Once
	release   func()
}

func (c *tcpConn) Read(p []byte) (int, error) {
	var deadline time.Time
	switch {
	case !c.first:
		deadline = c.firstBy
	case c.allocated || c.s.relays.hasAllocation(c.key):
		c.allocated = true
		deadline = time.Now().Add(tcpIdleTimeout)
	default:
		deadline = time.Now().Add(c.s.tcpIdle0)
	}
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if !c.first && n > 0 && !c.track(p[:n]) {
		return 0, errNotSTUN
	}
	return n, err
}

// track follows the first message through b, the next bytes read; false
// if it is not a STUN message.
func (c *tcpConn) track(b []byte) bool {
	if c.seen < len(c.hdr) {
		k := copy(c.hdr[c.seen:], b)
		c.seen += k
		b = b[k:]
		if c.seen < len(c.hdr) {
			return true
		}
		h := c.hdr[:]
		if h[0]&0xc0 != 0 || !stun.IsMessage(h) {
			return false
		}
		c.need = len(c.hdr) + int(binary.BigEndian.Uint16(h[2:4]))
	}
	c.seen += len(b)
	c.first = c.seen >= c.need
	return true
}

func (c *tcpConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
