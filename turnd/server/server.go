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

	// tcpMessage and tcpUnallocated replace tcpMessageTimeout and
	// tcpUnallocatedTimeout when not 0 (tests).
	tcpMessage, tcpUnallocated time.Duration
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
	watched []*watchedPacketConn // the same
	tcp     []net.Listener
	recheck chan struct{}
	failed  chan error
	closing atomic.Bool
	closeMu sync.Mutex

	respLimit *respLimiter  // responses to sources without an allocation
	tcpSlots  chan struct{} // max_tcp_connections
	tcpPerIP  int           // max_tcp_connections_per_ip
	tcpMsg    time.Duration // tcpMessageTimeout
	tcpUnall  time.Duration // tcpUnallocatedTimeout
	tcpMu     sync.Mutex
	tcpByIP   map[netip.Addr]int
	tcpLocal  map[*net.TCPAddr]netip.AddrPort // a connection's server address by its client address (the pointer pion is given)
}

// udpReceiveBuffer is the receive buffer asked for each UDP socket clients
// send to: all clients of a socket share it, and the default (about 200
// kB, some 90 datagrams of a video call) overflowed in bursts of 32
// clients while the read loop waited for a CPU.
const udpReceiveBuffer = 4 << 20

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
			if serr == nil {
				// The kernel caps it at net.core.rmem_max, silently.
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReceiveBuffer)
			}
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
		tcpByIP: map[netip.Addr]int{}, tcpLocal: map[*net.TCPAddr]netip.AddrPort{},
		tcpMsg: tcpMessageTimeout, tcpUnall: tcpUnallocatedTimeout,
	}
	if o.tcpMessage > 0 {
		s.tcpMsg = o.tcpMessage
	}
	if o.tcpUnallocated > 0 {
		s.tcpUnall = o.tcpUnallocated
	}
	s.respLimit = newRespLimiter(cfg.UnauthenticatedResponsesPerPrefix)
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
			return s.creds.allocate(s.relays, username, src, s.localOf(src))
		},
		EventHandler: turn.EventHandler{
			OnAuth: func(src, dst net.Addr, proto, username, realm, method string, verdict bool) {
				defer s.recoverPanic("auth event", nil)
				s.creds.onAuth(src, dst, proto, username, realm, method, verdict)
			},
			OnAllocationCreated: func(src, dst net.Addr, _, username, _ string, relay net.Addr, _ int) {
				defer s.recoverPanic("allocation event", nil)
				if ua, ok := relay.(*net.UDPAddr); ok {
					gen, err := s.relays.attach(ua.Port, username, src, dst)
					switch {
					case errors.Is(err, errUnreserved):
						s.log.Warn("an allocation the quota handler did not admit, ended", logging.IP(addrString(src)))
					case err == nil && gen != s.creds.generation():
						// An account changed after the store was asked:
						// that change's recheck may have run before this
						// allocation was here to be seen.
						s.triggerRecheck()
					}
				}
			},
			// A request of src failed: if it was an Allocate the quota
			// handler admitted, its reservation goes.
			OnAllocationError: func(src, dst net.Addr, _, _ string) {
				defer s.recoverPanic("allocation error event", nil)
				s.relays.release(pendKeyOf(src, dst))
			},
			OnPermissionCreated: func(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
				defer s.recoverPanic("permission event", nil)
				s.permit(relay, peer, true)
			},
			OnPermissionDeleted: func(_, _ net.Addr, _, _, _ string, relay net.Addr, peer net.IP) {
				defer s.recoverPanic("permission event", nil)
				s.permit(relay, peer, false)
			},
			OnChannelCreated: func(_, _ net.Addr, _, _, _ string, relay, peer net.Addr, num uint16) {
				defer s.recoverPanic("channel event", nil)
				s.channel(relay, peer, num, true)
			},
			OnChannelDeleted: func(_, _ net.Addr, _, _, _ string, relay, peer net.Addr, num uint16) {
				defer s.recoverPanic("channel event", nil)
				s.channel(relay, peer, num, false)
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
		wc := &watchedPacketConn{PacketConn: c, s: s, local: addrPort(c.LocalAddr())}
		if uc, ok := c.(*net.UDPConn); ok {
			if wc.io, err = newUDPIO(uc); err != nil {
				return nil, err
			}
			if s.relays.senders[wc.local] == nil {
				s.relays.senders[wc.local] = wc
			}
		}
		s.udp = append(s.udp, wc)
		s.watched = append(s.watched, wc)
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

func (s *Server) channel(relay, peer net.Addr, num uint16, on bool) {
	if ua, ok := relay.(*net.UDPAddr); ok {
		if c := s.relays.get(ua.Port); c != nil {
			c.channel(num, addrPort(peer), on)
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
	s.countPanic(what, v)
}

// countPanic counts and logs a recovered panic.
func (s *Server) countPanic(what string, v any) {
	if s.panics != nil {
		s.panics.Inc()
	}
	s.log.Error("panic in a TURN callback", "in", what, "panic", fmt.Sprint(v))
}

// localOf is the server address the client src reached with the Allocate
// pion is handling (the quota handler is told src only): src is the very
// address value the socket's read returned to pion.
func (s *Server) localOf(src net.Addr) netip.AddrPort {
	switch a := src.(type) {
	case *net.UDPAddr:
		for _, c := range s.watched {
			if c.allocSrc.Load() == a {
				return c.local
			}
		}
	case *net.TCPAddr:
		s.tcpMu.Lock()
		defer s.tcpMu.Unlock()
		return s.tcpLocal[a]
	}
	return netip.AddrPort{}
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
// limits the responses to sources without an allocation, and relays the
// ChannelData of UDP clients itself (see relayConn).
type watchedPacketConn struct {
	net.PacketConn
	s     *Server
	io    *udpIO         // nil: not a *net.UDPConn (the ordinary calls then)
	local netip.AddrPort // the address pion knows the socket by
	// allocSrc is the source the last Allocate request read came from,
	// the value pion was given: it tells the quota handler the socket.
	allocSrc atomic.Pointer[net.UDPAddr]
}

// ReadFrom returns the next datagram that is not ChannelData on a channel
// of a UDP client's allocation: those it sends to the channel's peer, as
// pion would (through the relay's checks), and reads on.
func (c *watchedPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	if c.io == nil {
		n, a, err := c.PacketConn.ReadFrom(p)
		c.failed(err)
		if ua, ok := a.(*net.UDPAddr); ok && stunAllocate(p[:n]) {
			c.allocSrc.Store(ua)
		}
		return n, a, err
	}
	for {
		n, ap, err := c.io.ReadFrom(p)
		if err != nil {
			c.failed(err)
			return n, nil, err
		}
		// ChannelData (RFC 8656, section 12.4: numbers 0x4000-0x7FFF,
		// the first two bits 01), complete, and not possibly truncated
		// (pion drops a datagram that fills its buffer).
		if n >= channelDataHeader && n < len(p) && p[0]&0xc0 == 0x40 {
			if l := int(binary.BigEndian.Uint16(p[2:4])); l <= n-channelDataHeader {
				if r := c.s.relays.client(clientKey{local: c.local, client: ap}); r != nil {
					if peer, ok := r.channelPeer(binary.BigEndian.Uint16(p[0:2])); ok {
						// A failed send is a datagram lost, as pion's is.
						_, _ = r.send(p[channelDataHeader:channelDataHeader+l], peer)
						continue
					}
				}
			}
		}
		ua := net.UDPAddrFromAddrPort(ap)
		if stunAllocate(p[:n]) {
			c.allocSrc.Store(ua)
		}
		return n, ua, nil
	}
}

// stunAllocate reports whether p is an Allocate request (type 0x0003).
func stunAllocate(p []byte) bool {
	return len(p) >= 20 && p[0] == 0 && p[1] == 3
}

func (c *watchedPacketConn) failed(err error) {
	if err != nil && !c.s.closing.Load() {
		c.s.fail(fmt.Errorf("udp socket: %w", err))
	}
}

// WriteTo drops STUN responses (not indications, not ChannelData: what is
// relayed passes untouched) to a source without an allocation over
// unauthenticated_responses_per_prefix: a 20-byte Allocate without
// credentials gets a 401 of about 72 bytes, a Binding request twice its
// size, so a spoofed source could have turnd reflect more at its owner
// than the spoofer sends.
func (c *watchedPacketConn) WriteTo(p []byte, a net.Addr) (int, error) {
	ua, ok := a.(*net.UDPAddr)
	if !ok {
		return c.PacketConn.WriteTo(p, a)
	}
	ap := ua.AddrPort()
	if c.s.respLimit != nil && len(p) >= 20 && p[0]&0xc0 == 0 && !stunIndication(p) {
		if !c.s.relays.hasAllocation(srcKey{ap: ap}) && !c.s.respLimit.allow(ap, stunBinding(p), time.Now()) {
			c.s.m.respDropped.Inc()
			return len(p), nil // as a network loses it
		}
	}
	return c.send(p, ap)
}

// send sends p to ap, unlimited.
func (c *watchedPacketConn) send(p []byte, ap netip.AddrPort) (int, error) {
	if c.io == nil {
		return c.PacketConn.WriteTo(p, net.UDPAddrFromAddrPort(ap))
	}
	return c.io.WriteTo(p, ap)
}

// stunBinding reports whether the STUN message p is of the Binding method:
// its type without the class bits (0x0110) is 0x0001.
func stunBinding(p []byte) bool {
	return binary.BigEndian.Uint16(p[0:2])&0x3eef == 0x0001
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
	// tcpMessageTimeout is how long a TCP connection without an
	// allocation has to complete a STUN message once its first byte
	// arrived, and its first message once it was accepted.
	tcpMessageTimeout = 5 * time.Second
	// tcpUnallocatedTimeout closes a TCP connection that has no allocation
	// this long after its accept (or after its allocation ended), however
	// busy: only allocations hold a connection open.
	tcpUnallocatedTimeout = 30 * time.Second
	// tcpIdleTimeout closes a TURN-over-TCP connection with an allocation
	// that sent nothing for this long: an allocation is refreshed well
	// within its 10-minute default lifetime, permissions every 5 minutes.
	tcpIdleTimeout = 12 * time.Minute
)

var (
	errNotSTUN   = errors.New("a TCP connection did not start with a STUN message")
	errBadFrame  = errors.New("a TCP connection sent neither STUN nor ChannelData, or a length pion mistakes")
	errTCPExpiry = errors.New("a TCP connection without an allocation expired")
)

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
	ra, _ := c.RemoteAddr().(*net.TCPAddr)
	s.tcpMu.Lock()
	if s.tcpByIP[ip] >= s.tcpPerIP {
		s.tcpMu.Unlock()
		<-s.tcpSlots
		s.m.tcpRefused.WithLabelValues(tcpRefusedIP).Inc()
		return nil
	}
	s.tcpByIP[ip]++
	if ra != nil {
		s.tcpLocal[ra] = addrPort(c.LocalAddr())
	}
	s.tcpMu.Unlock()
	release := func() {
		s.tcpMu.Lock()
		if s.tcpByIP[ip]--; s.tcpByIP[ip] <= 0 {
			delete(s.tcpByIP, ip)
		}
		if ra != nil {
			delete(s.tcpLocal, ra)
		}
		s.tcpMu.Unlock()
		<-s.tcpSlots
	}
	now := time.Now()
	return &tcpConn{Conn: c, s: s, key: keyOf(c.RemoteAddr()), release: release,
		msgBy: now.Add(s.tcpMsg), unallocBy: now.Add(s.tcpUnall)}
}

// tcpConn is a TURN-over-TCP connection. Until it has an allocation it
// must have one by unallocBy (tcpUnallocatedTimeout after the accept, or
// after its allocation ended), its first message must be a STUN message
// complete within tcpMessageTimeout of the accept, and every later one
// complete within tcpMessageTimeout of its first byte; with an allocation
// it may be idle tcpIdleTimeout. It follows the stream's messages as
// pion's framing (turn.STUNConn) cuts them. pion reads it from one
// goroutine.
type tcpConn struct {
	net.Conn
	s         *Server
	key       srcKey
	unallocBy time.Time // without an allocation, closed then
	msgBy     time.Time // the message under way must be complete by then; zero: not yet started
	hdr       [20]byte  // the current message's first bytes
	seen      int       // bytes of the current message seen
	msgs      int       // messages complete
	allocated bool      // it had an allocation at the last read
	once      sync.Once
	release   func()
}

func (c *tcpConn) Read(p []byte) (n int, err error) {
	// pion's read loop has no recover: a bug in the framing check must
	// close this connection, not end every call the server relays.
	defer func() {
		if v := recover(); v != nil {
			c.s.countPanic("tcp read", v)
			n, err = 0, errBadFrame
		}
	}()
	now := time.Now()
	var deadline time.Time
	if c.s.relays.hasAllocation(c.key) {
		c.allocated = true
		deadline = now.Add(tcpIdleTimeout)
	} else {
		if c.allocated {
			// Its allocation ended: as long to make another as a new
			// connection has.
			c.allocated = false
			c.unallocBy = now.Add(c.s.tcpUnall)
		}
		if !now.Before(c.unallocBy) {
			return 0, errTCPExpiry
		}
		deadline = c.unallocBy
		if (c.msgs == 0 || c.seen > 0) && c.msgBy.Before(deadline) {
			deadline = c.msgBy
		}
	}
	if err := c.Conn.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	n, err = c.Conn.Read(p)
	if n > 0 {
		// A chunk refused is never given to pion: its framing could
		// loop on it forever.
		if terr := c.track(p[:n]); terr != nil {
			return 0, terr
		}
		if c.seen > 0 && c.msgBy.IsZero() {
			c.msgBy = time.Now().Add(c.s.tcpMsg)
		}
	}
	return n, err
}

// track follows the stream's messages through b, the next bytes read, as
// pion's framing cuts them: a STUN message (20 bytes and its length) or
// ChannelData (4 bytes and its length padded to 4), told apart by what
// pion has buffered when it looks (STUN once 20 bytes with the magic
// cookie are in, else ChannelData by its number once 9 bytes are).
// errNotSTUN if the first message is not a STUN message, errBadFrame if a
// later one is neither or its size overflows pion's 16 bits (a size that
// wraps to 0 would have pion's read loop spin on its buffer forever).
func (c *tcpConn) track(b []byte) error {
	for len(b) > 0 {
		if c.seen < len(c.hdr) {
			copy(c.hdr[c.seen:], b)
		}
		avail := c.seen + len(b)
		size, err := frameSize(c.hdr[:min(avail, len(c.hdr))], avail, c.msgs == 0)
		if err != nil {
			return err
		}
		if size == 0 || avail < size {
			c.seen = avail
			return nil
		}
		if size < c.seen {
			// pion tells ChannelData only once 9 bytes are in, and one of
			// 4 to 8 bytes is then shorter than what was in: the rest of
			// those bytes starts the next message. (Rare: a copy.)
			b = append(append([]byte(nil), c.hdr[size:c.seen]...), b...)
		} else {
			b = b[size-c.seen:]
		}
		c.seen = 0
		c.msgs++
		c.msgBy = time.Time{}
	}
	return nil
}

// frameSize is the size of the message whose first bytes are h, avail
// bytes of it being in, as pion's turn.STUNConn judges it, or 0 while
// that cannot be told.
func frameSize(h []byte, avail int, first bool) (int, error) {
	size := 0
	switch {
	case first && h[0]&0xc0 != 0: // not STUN, and pion may take it for ChannelData before 20 bytes are in
		return 0, errNotSTUN
	case first && len(h) < 20:
		return 0, nil
	case first && !stun.IsMessage(h):
		return 0, errNotSTUN
	case avail < 9:
		return 0, nil
	case stun.IsMessage(h): // 20 bytes in, with the magic cookie
		size = 20 + int(binary.BigEndian.Uint16(h[2:4]))
	case h[0]&0xc0 == 0x40: // a channel number, 0x4000-0x7FFF
		size = 4 + (int(binary.BigEndian.Uint16(h[2:4]))+3)&^3
	case len(h) < 20:
		return 0, nil
	default:
		return 0, errBadFrame
	}
	if size > 0xffff {
		return 0, errBadFrame
	}
	return size, nil
}

func (c *tcpConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
