package server

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"chatmail.dev/sidecar/turncred"
)

// maxDatagram is the largest datagram relayed: pion's read buffers (its
// inbound MTU and the relay socket's buffer) are this size.
const maxDatagram = 1600

// portTries is how many random ports of the range are tried per relay.
const portTries = 32

var (
	errCapacity    = errors.New("max_allocations reached")
	errNoPort      = errors.New("no free relay port")
	errPortRange   = errors.New("requested relay port outside the range")
	errNotUDP4     = errors.New("relays are IPv4 UDP only")
	errNotUDPAddr  = errors.New("peer address is not a UDP address")
	errRelayClosed = errors.New("relay closed")
	errUnreserved  = errors.New("an allocation the quota handler did not admit")
	errRelayGone   = errors.New("the relay of an allocation is gone")
)

// relays makes the relay sockets of allocations (it is pion's
// RelayAddressGenerator) and keeps every live one, so that turnd can count
// them per account and source, bound their permissions and channels, end
// those whose credential became unusable, and shape their traffic.
type relays struct {
	bind        netip.Addr // IPv4 the sockets are bound to
	advertised  net.IP     // what allocations say: relay_address
	portMin     int
	portMax     int
	max         int // max_allocations
	perAccount  int // max_allocations_per_account
	perIP       int // max_allocations_per_ip
	maxPerms    int // max_permissions_per_allocation
	maxChannels int // max_channels_per_allocation
	rate        int // bytes per second and direction; 0 no limit
	policy      *peerPolicy
	m           *Metrics

	// senders are the UDP listener sockets by their address, the first of
	// those sharing one (any of them sends from that address); set before
	// pion starts.
	senders map[netip.AddrPort]*watchedPacketConn

	// byClient finds a UDP client's allocation for its ChannelData, which
	// turnd relays itself (see watchedPacketConn.ReadFrom).
	fastMu   sync.RWMutex
	byClient map[clientKey]*relayConn

	mu        sync.Mutex
	byPort    map[int]*relayConn
	bySrc     map[srcKey][]*relayConn // replaced, never changed in place
	byAccount map[string]int          // live and reserved allocations (the address only in memory)
	byIP      map[netip.Addr]int      // live and reserved allocations
	pending   map[pendKey]reservation // admitted, not yet made
	open      int                     // relay sockets open, attached to an allocation or not yet
	closed    traffic                 // of the relays closed so far
}

// reservation is an Allocate the quota handler admitted: it counts in the
// quotas from then on, so that requests racing on different sockets
// cannot pass them together. pion makes the allocation right after (in
// the same goroutine): the allocation takes it over, or the request
// fails and it is released.
type reservation struct {
	account string
	ip      netip.Addr
	at      time.Time
	gen     uint64 // of the credential cache when the account was looked up
}

// pendKey names an Allocate under way as pion names the allocation it
// makes: the client's transport address and the server address it
// reached. One client address may reach several listen addresses at once,
// each served by its own goroutine; one pair is served by one goroutine (a
// TCP connection's, or the UDP socket's the kernel hashes the pair to).
type pendKey struct {
	src   srcKey
	local netip.AddrPort
}

func pendKeyOf(src, local net.Addr) pendKey {
	return pendKey{src: keyOf(src), local: addrPort(local)}
}

// pendingTTL is when a reservation whose end turnd did not hear about is
// released (pion reports every failure, so this is a backstop).
const pendingTTL = 10 * time.Second

func newRelays(cfg *Config, policy *peerPolicy) *relays {
	bind := netip.MustParseAddr(cfg.RelayBind).Unmap()
	adv := netip.MustParseAddr(cfg.RelayAddress).Unmap().As4()
	return &relays{
		bind: bind, advertised: net.IP(adv[:]),
		portMin: cfg.RelayPortMin, portMax: cfg.RelayPortMax,
		max: cfg.MaxAllocations, perAccount: cfg.MaxAllocationsPerAccount, perIP: cfg.MaxAllocationsPerIP,
		maxPerms: cfg.MaxPermissionsPerAllocation, maxChannels: cfg.MaxChannelsPerAllocation,
		rate: cfg.MaxBandwidthPerAllocation, policy: policy,
		byPort: map[int]*relayConn{}, bySrc: map[srcKey][]*relayConn{}, byAccount: map[string]int{},
		byIP: map[netip.Addr]int{}, pending: map[pendKey]reservation{},
		senders: map[netip.AddrPort]*watchedPacketConn{}, byClient: map[clientKey]*relayConn{},
	}
}

// clientKey names a UDP client's allocation as pion does: the client's
// address and the server address it reached.
type clientKey struct {
	local, client netip.AddrPort
}

// client finds the allocation of a UDP client for its ChannelData.
func (r *relays) client(k clientKey) *relayConn {
	r.fastMu.RLock()
	c := r.byClient[k]
	r.fastMu.RUnlock()
	return c
}

// Validate implements turn.RelayAddressGenerator.
func (r *relays) Validate() error { return nil }

// AllocateConn implements turn.RelayAddressGenerator: TCP relays
// (RFC 6062) are not offered.
func (r *relays) AllocateConn(string, int) (net.Conn, net.Addr, error) {
	return nil, nil, errNotUDP4
}

// AllocatePacketConn implements turn.RelayAddressGenerator: a socket on a
// free port of the range, bound to relay_bind, announced at relay_address.
// It is the exact bound of max_allocations (the quota check before it can
// race with another listener's).
func (r *relays) AllocatePacketConn(network string, requestedPort int) (net.PacketConn, net.Addr, error) {
	if network != "udp4" {
		return nil, nil, errNotUDP4
	}
	r.mu.Lock()
	if r.open >= r.max {
		r.mu.Unlock()
		r.m.refused.WithLabelValues(refusedQuotaAll).Inc()
		return nil, nil, errCapacity
	}
	r.open++
	r.mu.Unlock()
	conn, err := r.listen(requestedPort)
	if err != nil {
		r.mu.Lock()
		r.open--
		r.mu.Unlock()
		r.m.refused.WithLabelValues(refusedNoPort).Inc()
		return nil, nil, err
	}
	uio, err := newUDPIO(conn)
	if err != nil {
		_ = conn.Close() // the error is the one to report
		r.mu.Lock()
		r.open--
		r.mu.Unlock()
		return nil, nil, err
	}
	port := conn.LocalAddr().(*net.UDPAddr).Port
	c := &relayConn{UDPConn: conn, io: uio, r: r, port: port, perms: map[netip.Addr]struct{}{}}
	if r.rate > 0 {
		now := time.Now()
		c.in = bucket{rate: float64(r.rate), tokens: float64(r.rate), last: now}
		c.out = c.in
	}
	r.mu.Lock()
	r.byPort[port] = c
	r.mu.Unlock()
	return c, &net.UDPAddr{IP: r.advertised, Port: port}, nil
}

func (r *relays) listen(requested int) (*net.UDPConn, error) {
	at := func(port int) (*net.UDPConn, error) {
		return net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(r.bind, uint16(port))))
	}
	if requested != 0 {
		if requested < r.portMin || requested > r.portMax {
			return nil, errPortRange
		}
		return at(requested)
	}
	for range portTries {
		if c, err := at(r.portMin + rand.IntN(r.portMax-r.portMin+1)); err == nil {
			return c, nil
		}
	}
	return nil, errNoPort
}

// ipFull reports whether the source ip has its quota of allocations: a
// cheap check before the store is asked.
func (r *relays) ipFull(ip netip.Addr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byIP[ip] >= r.perIP
}

// admit says why an Allocate of account from src must be refused, or
// reserves its place in the quotas and says "". gen is the credential
// cache's generation before the account was looked up.
func (r *relays) admit(src pendKey, ip netip.Addr, account string, gen uint64) string {
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.pending[src]; ok {
		// The same pair's last Allocate ended unseen: its goroutine is
		// this one, so it is over.
		r.unreserve(src, old)
	}
	if len(r.pending) >= 64 {
		for k, p := range r.pending {
			if now.Sub(p.at) > pendingTTL {
				r.unreserve(k, p)
			}
		}
	}
	switch {
	case r.open >= r.max:
		return refusedQuotaAll
	case r.byAccount[account] >= r.perAccount:
		return refusedQuotaAccount
	case r.byIP[ip] >= r.perIP:
		return refusedQuotaIP
	}
	r.byAccount[account]++
	r.byIP[ip]++
	r.pending[src] = reservation{account: account, ip: ip, at: now, gen: gen}
	return ""
}

// release gives back the reservation of src, if any: its Allocate failed.
func (r *relays) release(src pendKey) {
	r.mu.Lock()
	if p, ok := r.pending[src]; ok {
		r.unreserve(src, p)
	}
	r.mu.Unlock()
}

// unreserve; r.mu held.
func (r *relays) unreserve(src pendKey, p reservation) {
	delete(r.pending, src)
	r.uncount(p.account, p.ip)
}

// uncount; r.mu held.
func (r *relays) uncount(account string, ip netip.Addr) {
	if r.byAccount[account]--; r.byAccount[account] <= 0 {
		delete(r.byAccount, account)
	}
	if r.byIP[ip]--; r.byIP[ip] <= 0 {
		delete(r.byIP, ip)
	}
}

// attach ties the relay at port to the allocation of username from src
// that pion made with it (src reached the server at dst), which takes over
// the reservation of (src, dst), and returns the cache generation its
// account was looked up in. An allocation without a reservation (the
// quota handler admitted none for the pair) is ended: it would count in
// no account's quota.
func (r *relays) attach(port int, username string, src, dst net.Addr) (uint64, error) {
	pk := pendKeyOf(src, dst)
	key := pk.src
	r.mu.Lock()
	res, reserved := r.pending[pk]
	delete(r.pending, pk)
	c := r.byPort[port]
	expiry, err := turncred.ParseUsername(username)
	if c == nil || c.user != "" || !reserved || err != nil {
		if reserved {
			r.uncount(res.account, res.ip)
		}
		r.mu.Unlock()
		if c == nil || c.user != "" {
			return 0, errRelayGone
		}
		_ = c.Close() // ending it is the point
		return 0, errUnreserved
	}
	c.user, c.expiry, c.account, c.ip, c.src = username, expiry, res.account, res.ip, key
	r.bySrc[key] = append(slices.Clip(r.bySrc[key]), c)
	r.mu.Unlock()
	if ua, ok := src.(*net.UDPAddr); ok {
		ck := clientKey{local: addrPort(dst), client: ua.AddrPort()}
		if out := r.senders[ck.local]; out != nil && out.io != nil {
			c.fast.Store(&fastPath{client: ck.client, out: out, key: ck})
			r.fastMu.Lock()
			r.byClient[ck] = c
			r.fastMu.Unlock()
		}
	}
	r.m.active.Inc()
	r.m.created.Inc()
	return res.gen, nil
}

// hasAllocation reports whether src has a live allocation.
func (r *relays) hasAllocation(src srcKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bySrc[src]) > 0
}

// admitPeer says why the allocation of src may not have a permission or
// a new channel for peer, or "". pion asks (its permission handler) in
// the goroutine that serves src, before it creates the permission or
// channel and reports it (permit, channel), and every permission and
// channel is created that way: the counts it judges are exact. A channel
// cannot be told from a permission here: an allocation with
// max_channels_per_allocation channels gets neither, refreshes included,
// until some of its channels expire.
func (r *relays) admitPeer(src net.Addr, peer netip.Addr) string {
	r.mu.Lock()
	conns := r.bySrc[keyOf(src)]
	r.mu.Unlock()
	if len(conns) == 0 {
		return refusedPermissions // pion found an allocation: turnd must know it
	}
	for _, c := range conns {
		if reason := c.admitPeer(peer.Unmap(), r.maxPerms, r.maxChannels); reason != "" {
			return reason
		}
	}
	return ""
}

// get returns the live relay at port, or nil.
func (r *relays) get(port int) *relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byPort[port]
}

func (r *relays) remove(c *relayConn) {
	if fp := c.fast.Load(); fp != nil {
		r.fastMu.Lock()
		if r.byClient[fp.key] == c {
			delete(r.byClient, fp.key)
		}
		r.fastMu.Unlock()
	}
	t := c.traffic()
	r.mu.Lock()
	delete(r.byPort, c.port)
	r.open--
	r.closed.add(t)
	user := c.user
	if user != "" {
		r.uncount(c.account, c.ip)
		if conns := slices.DeleteFunc(slices.Clone(r.bySrc[c.src]), func(o *relayConn) bool { return o == c }); len(conns) > 0 {
			r.bySrc[c.src] = conns
		} else {
			delete(r.bySrc, c.src)
		}
	}
	r.mu.Unlock()
	if user != "" {
		r.m.active.Dec()
	}
}

// byExpiry returns the live allocations by the expiry of their credential.
func (r *relays) byExpiry() map[int64][]*relayConn {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := map[int64][]*relayConn{}
	for _, c := range r.byPort {
		if c.user != "" {
			m[c.expiry] = append(m[c.expiry], c)
		}
	}
	return m
}

// count is the number of live allocations.
func (r *relays) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.byPort {
		if c.user != "" {
			n++
		}
	}
	return n
}

// traffic sums what every relay, live or closed, carried.
func (r *relays) traffic() traffic {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.closed
	for _, c := range r.byPort {
		t.add(c.traffic())
	}
	return t
}

type traffic struct {
	toPeerBytes, toPeerPackets, fromPeerBytes, fromPeerPackets uint64
}

func (t *traffic) add(o traffic) {
	t.toPeerBytes += o.toPeerBytes
	t.toPeerPackets += o.toPeerPackets
	t.fromPeerBytes += o.fromPeerBytes
	t.fromPeerPackets += o.fromPeerPackets
}

// relayConn is an allocation's relay socket. pion writes a client's
// datagrams to its peers with WriteTo and reads the peers' with ReadFrom
// (one goroutine each); closing it ends the allocation (pion's read loop
// fails and deletes it).
//
// Datagrams on a channel of a UDP client's allocation (what calls use)
// turnd relays itself, both ways, past pion's per-datagram work and
// garbage: ReadFrom sends a channel's peer's datagram to the client as
// ChannelData and reads on, watchedPacketConn.ReadFrom sends a client's
// ChannelData to the channel's peer. The channels are those pion reports
// (its channel events). Everything else (Data indications, Send
// indications, TCP clients) goes through pion as before.
type relayConn struct {
	*net.UDPConn
	io   *udpIO
	r    *relays
	port int
	// user, expiry, account, ip and src are set once, under r.mu, when
	// pion has made the allocation; read under r.mu.
	user    string
	expiry  int64
	account string
	ip      netip.Addr
	src     srcKey

	fast  atomic.Pointer[fastPath]       // a UDP client's, once attached
	chans atomic.Pointer[[]channelEntry] // replaced under inMu, never changed in place

	closeOnce sync.Once

	outMu    sync.Mutex
	out      bucket
	lastPeer netip.Addr // the last peer found allowed

	inMu     sync.Mutex
	in       bucket
	perms    map[netip.Addr]struct{} // peers with a permission, as pion reports them
	channels int                     // channels, as pion reports them

	// rbuf is ReadFrom's: room for the ChannelData header before the
	// datagram and its padding after.
	rbuf [channelDataHeader + maxDatagram + 3]byte

	toPeerBytes, toPeerPackets, fromPeerBytes, fromPeerPackets atomic.Uint64
}

const channelDataHeader = 4

// fastPath is where a UDP client's allocation sends ChannelData: the
// client's address, from a listener socket with the address it reached.
type fastPath struct {
	client netip.AddrPort
	out    *watchedPacketConn
	key    clientKey
}

// channelEntry is a channel of the allocation: its number and peer
// (unmapped).
type channelEntry struct {
	num  uint16
	peer netip.AddrPort
}

func (c *relayConn) channelByPeer(peer netip.AddrPort) (uint16, bool) {
	if cs := c.chans.Load(); cs != nil {
		for _, e := range *cs {
			if e.peer == peer {
				return e.num, true
			}
		}
	}
	return 0, false
}

func (c *relayConn) channelPeer(num uint16) (netip.AddrPort, bool) {
	if cs := c.chans.Load(); cs != nil {
		for _, e := range *cs {
			if e.num == num {
				return e.peer, true
			}
		}
	}
	return netip.AddrPort{}, false
}

// WriteTo sends a client's datagram to a peer (pion's path).
func (c *relayConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errNotUDPAddr
	}
	return c.send(p, ua.AddrPort())
}

// send sends a client's datagram to a peer. The peer was checked when its
// permission was granted; it is checked again here, cheaply, so that no
// path inside pion can relay to a forbidden address. Datagrams over the
// bandwidth or to a forbidden peer are dropped, as a network drops them.
func (c *relayConn) send(p []byte, ap netip.AddrPort) (int, error) {
	ip := ap.Addr().Unmap()
	c.outMu.Lock()
	if ip != c.lastPeer {
		if !c.r.policy.allowed(ip) {
			c.outMu.Unlock()
			c.r.m.dropped.WithLabelValues("peer").Inc()
			return len(p), nil
		}
		c.lastPeer = ip
	}
	if c.r.rate > 0 && !c.out.take(len(p), time.Now()) {
		c.outMu.Unlock()
		c.r.m.dropped.WithLabelValues("bandwidth").Inc()
		return len(p), nil
	}
	c.outMu.Unlock()
	n, err := c.io.WriteTo(p, netip.AddrPortFrom(ip, ap.Port()))
	if err == nil {
		c.toPeerBytes.Add(uint64(n))
		c.toPeerPackets.Add(1)
	}
	return n, err
}

// ReadFrom returns the next datagram of a peer with a permission, within
// the bandwidth; others are dropped here, before pion spends anything on
// them, and do not use up the allocation's bandwidth. A datagram of a
// channel's peer to a UDP client goes to the client here, as pion would
// send it (ChannelData, padded to 4 bytes), and is not returned.
func (c *relayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	buf := c.rbuf[channelDataHeader : channelDataHeader+min(len(p), maxDatagram)]
	for {
		n, ap, err := c.io.ReadFrom(buf)
		if err != nil {
			return n, nil, err
		}
		ip := ap.Addr().Unmap()
		c.inMu.Lock()
		_, ok := c.perms[ip]
		if !ok {
			c.inMu.Unlock()
			continue
		}
		if c.r.rate > 0 && !c.in.take(n, time.Now()) {
			c.inMu.Unlock()
			c.r.m.dropped.WithLabelValues("bandwidth").Inc()
			continue
		}
		c.inMu.Unlock()
		c.fromPeerBytes.Add(uint64(n))
		c.fromPeerPackets.Add(1)
		peer := netip.AddrPortFrom(ip, ap.Port())
		if fp := c.fast.Load(); fp != nil {
			if num, ok := c.channelByPeer(peer); ok {
				binary.BigEndian.PutUint16(c.rbuf[0:2], num)
				binary.BigEndian.PutUint16(c.rbuf[2:4], uint16(n))
				end := channelDataHeader + n
				padded := (end + 3) &^ 3
				clear(c.rbuf[end:padded])
				// A failed send is a datagram lost, as pion's is (it
				// logs it).
				_, _ = fp.out.send(c.rbuf[:padded], fp.client)
				continue
			}
		}
		return copy(p, buf[:n]), net.UDPAddrFromAddrPort(peer), nil
	}
}

func (c *relayConn) permit(ip netip.Addr, on bool) {
	ip = ip.Unmap()
	c.inMu.Lock()
	if on {
		c.perms[ip] = struct{}{}
	} else {
		delete(c.perms, ip)
	}
	c.inMu.Unlock()
}

// channel records a channel pion created or deleted.
func (c *relayConn) channel(num uint16, peer netip.AddrPort, on bool) {
	peer = netip.AddrPortFrom(peer.Addr().Unmap().WithZone(""), peer.Port())
	c.inMu.Lock()
	defer c.inMu.Unlock()
	var cs []channelEntry
	if old := c.chans.Load(); old != nil {
		cs = slices.DeleteFunc(slices.Clone(*old), func(e channelEntry) bool { return e.num == num })
	}
	if on {
		c.channels++
		cs = append(cs, channelEntry{num: num, peer: peer})
	} else {
		c.channels--
	}
	c.chans.Store(&cs)
}

func (c *relayConn) admitPeer(ip netip.Addr, maxPerms, maxChannels int) string {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	if c.channels >= maxChannels {
		return refusedChannels
	}
	if _, ok := c.perms[ip]; !ok && len(c.perms) >= maxPerms {
		return refusedPermissions
	}
	return ""
}

// Close closes the socket once, which ends the allocation.
func (c *relayConn) Close() error {
	err := errRelayClosed
	c.closeOnce.Do(func() {
		err = c.UDPConn.Close()
		c.r.remove(c)
	})
	if errors.Is(err, errRelayClosed) {
		return nil // pion closes again what turnd closed
	}
	return err
}

func (c *relayConn) traffic() traffic {
	return traffic{
		toPeerBytes: c.toPeerBytes.Load(), toPeerPackets: c.toPeerPackets.Load(),
		fromPeerBytes: c.fromPeerBytes.Load(), fromPeerPackets: c.fromPeerPackets.Load(),
	}
}

// bucket is a token bucket of bytes holding at most one second's worth.
type bucket struct {
	rate, tokens float64
	last         time.Time
}

func (b *bucket) take(n int, now time.Time) bool {
	b.tokens = min(b.rate, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}
