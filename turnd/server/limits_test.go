package server

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/turncred"
)

// onlyRelay is the one live relay of s.
func (s *testServer) onlyRelay(t testing.TB) *relayConn {
	t.Helper()
	s.relays.mu.Lock()
	defer s.relays.mu.Unlock()
	if len(s.relays.byPort) != 1 {
		t.Fatalf("%d relays, want 1", len(s.relays.byPort))
	}
	for _, c := range s.relays.byPort {
		return c
	}
	return nil
}

func (c *relayConn) counts() (perms, channels int) {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	return len(c.perms), c.channels
}

func (s *testServer) permRefused(reason string) float64 {
	return testutil.ToFloat64(s.m.permRefused.WithLabelValues(reason))
}

func allocated(t testing.TB, s *testServer) *rawClient {
	t.Helper()
	user, pass := issue(s.store)
	rc := newRawClient(t, s.addr, user, pass)
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	return rc
}

func publicPeer(i int) net.IP { return net.IPv4(8, 8, byte(i>>8), byte(i)) }

// One CreatePermission carries many XOR-PEER-ADDRESS attributes, each a
// permission: an allocation gets max_permissions_per_allocation, and
// still refreshes them.
func TestPermissionsPerAllocation(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxPermissionsPerAllocation = 4 }, nil)
	rc := allocated(t, s)
	var peers []stun.Setter
	for i := range 100 {
		peers = append(peers, peerAddr(publicPeer(i), 9))
	}
	if res := rc.do(t, stun.MethodCreatePermission, peers...); res.Type.Class != stun.ClassErrorResponse {
		t.Errorf("100 permissions granted: %s", res)
	}
	c := s.onlyRelay(t)
	if p, _ := c.counts(); p != 4 {
		t.Fatalf("%d permissions, want 4", p)
	}
	if v := s.permRefused(refusedPermissions); v != 1 {
		t.Errorf("permissions_refused{permissions} = %v", v)
	}
	// The ones it has are refreshed, by CreatePermission and ChannelBind.
	if res := rc.do(t, stun.MethodCreatePermission, peerAddr(publicPeer(0), 9), peerAddr(publicPeer(3), 1)); res.Type.Class != stun.ClassSuccessResponse {
		t.Errorf("refresh refused: %s", res)
	}
	if res := rc.do(t, stun.MethodChannelBind, channel(0x4000), peerAddr(publicPeer(1), 9)); res.Type.Class != stun.ClassSuccessResponse {
		t.Errorf("channel to a permitted peer refused: %s", res)
	}
	if res := rc.do(t, stun.MethodChannelBind, channel(0x4001), peerAddr(publicPeer(50), 9)); res.Type.Class != stun.ClassErrorResponse {
		t.Errorf("channel to a fifth peer bound: %s", res)
	}
	if p, _ := c.counts(); p != 4 {
		t.Fatalf("%d permissions, want 4", p)
	}
}

func TestChannelsPerAllocation(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxChannelsPerAllocation = 3 }, nil)
	rc := allocated(t, s)
	for i := range 10 {
		res := rc.do(t, stun.MethodChannelBind, channel(0x4000+uint16(i)), peerAddr(publicPeer(0), 1000+i))
		if ok := res.Type.Class == stun.ClassSuccessResponse; ok != (i < 3) {
			t.Errorf("channel %d: %s", i, res)
		}
	}
	if _, ch := s.onlyRelay(t).counts(); ch != 3 {
		t.Fatalf("%d channels, want 3", ch)
	}
	if v := s.permRefused(refusedChannels); v != 7 {
		t.Errorf("permissions_refused{channels} = %v", v)
	}
}

// The counts follow pion's: an allocation that ends takes its
// permissions and channels along, and a new one starts at 0.
func TestPermissionCountsFollowAllocation(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxPermissionsPerAllocation = 2 }, nil)
	rc := allocated(t, s)
	if res := rc.do(t, stun.MethodChannelBind, channel(0x4000), peerAddr(publicPeer(1), 9)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	if p, ch := s.onlyRelay(t).counts(); p != 1 || ch != 1 {
		t.Fatalf("%d permissions %d channels", p, ch)
	}
	if res := rc.do(t, stun.MethodRefresh, lifetime(0)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	if res := rc.do(t, stun.MethodCreatePermission, peerAddr(publicPeer(2), 9), peerAddr(publicPeer(3), 9)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("a new allocation of the same source: %s", res)
	}
}

func TestQuotaPerIP(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxAllocationsPerIP = 2 }, nil)
	for i := range 2 {
		u, p := issue(s.store)
		if _, err := s.client(t, u, p).Allocate(); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	before := s.store.count()
	u, p := issue(s.store)
	if _, err := s.client(t, u, p).Allocate(); err == nil {
		t.Fatal("third allocation of one source IP")
	}
	if v := s.refused(refusedQuotaIP); v != 1 {
		t.Errorf("refused{quota_ip} = %v", v)
	}
	if n := s.store.count() - before; n != 0 {
		t.Errorf("%d store lookups for a source over its quota", n)
	}
}

func TestRatePerIP(t *testing.T) {
	s := start(t, func(c *Config) { c.AllocationRatePerIP, c.AllocationBurstPerIP = 6, 2 }, nil)
	for i := range 2 {
		u, p := issue(s.store)
		if _, err := s.client(t, u, p).Allocate(); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	u, p := issue(s.store)
	if _, err := s.client(t, u, p).Allocate(); err == nil {
		t.Fatal("third allocation within the burst")
	}
	if v := s.refused(refusedRateIP); v != 1 {
		t.Errorf("refused{rate_ip} = %v", v)
	}
}

// An Allocate admitted by the quotas that pion then fails to make gives
// its place back.
func TestFailedAllocateReleasesQuota(t *testing.T) {
	taken, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.LocalAddr().(*net.UDPAddr).Port
	s := start(t, func(c *Config) {
		c.RelayPortMin, c.RelayPortMax = port, port
		c.MaxAllocationsPerAccount, c.MaxAllocationsPerIP = 1, 1
	}, nil)
	user, pass := issue(s.store)
	for range 3 {
		if _, err := s.client(t, user, pass).Allocate(); err == nil {
			t.Fatal("allocated on a taken port")
		}
	}
	if v := s.refused(refusedNoPort); v != 3 {
		t.Errorf("refused{no_port} = %v", v)
	}
	// pion answers before it reports the failure, and a retransmitted
	// request may still be under way: the reservations go soon after.
	waitFor(t, "the reservations to go", func() bool {
		s.relays.mu.Lock()
		defer s.relays.mu.Unlock()
		return len(s.relays.pending)+len(s.relays.byAccount)+len(s.relays.byIP) == 0
	})
	_ = taken.Close()
	time.Sleep(300 * time.Millisecond) // past any retransmission of the last client
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatalf("once the port is free: %v", err)
	}
}

// A blocked account's credential is asked about once per cacheTTL, not
// at every Allocate; an account change or a lost notification drops it.
func TestNegativeCache(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	exp, _ := turncred.ParseUsername(user)
	s.store.set(exp, false)
	for range 3 {
		if _, err := s.client(t, user, pass).Allocate(); err == nil {
			t.Fatal("allocated")
		}
	}
	if n := s.store.count(); n != 1 {
		t.Errorf("%d lookups for three Allocates of a blocked account, want 1", n)
	}
	s.store.set(exp, true) // unblocked
	s.AccountChanged("x@" + testRealm)
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatalf("after the unblock was announced: %v", err)
	}
	s.store.set(exp, false)
	s.WatchingChanges(false)
	before := s.store.count()
	for range 2 {
		if _, err := s.client(t, user, pass).Allocate(); err == nil {
			t.Fatal("allocated")
		}
	}
	if n := s.store.count() - before; n < 2 {
		t.Errorf("%d lookups for two Allocates while not watching, want 2", n)
	}
}

// While the store hangs, an uncached Allocate holds its socket's read
// loop for store_timeout once, then the store is not asked for
// store_backoff: the relaying on that socket stalls for one timeout, not
// one per Allocate.
func TestHangingStoreBackoff(t *testing.T) {
	const timeout, backoff = 200 * time.Millisecond, 1500 * time.Millisecond
	s := start(t, func(c *Config) {
		c.UDPSockets = 1
		c.StoreTimeout, c.StoreBackoff = config.Duration(timeout), config.Duration(backoff)
	}, nil)
	user, pass := issue(s.store)
	relay, err := s.client(t, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	peer := udpPeer(t)
	exchange(t, relay, peer.LocalAddr(), peer, "open")
	exchange(t, peer, relay.LocalAddr(), relay, "open")

	s.WatchingChanges(false) // nothing cached
	s.store.setHang(true)
	before := s.store.count()
	started := time.Now()
	const n = 10
	for range n {
		u, p := issue(s.store)
		if _, err := s.client(t, u, p).Allocate(); err == nil {
			t.Fatal("allocated while the store hangs")
		}
	}
	took := time.Since(started)
	if got := s.store.count() - before; got != 1 {
		t.Errorf("%d store queries for %d Allocates in the backoff, want 1", got, n)
	}
	// pion's client may send the first again while the store hangs.
	if v := s.refused(refusedStore); v < n {
		t.Errorf("refused{store} = %v, want %d", v, n)
	}
	if v := testutil.ToFloat64(s.m.lookups.WithLabelValues("backoff")); v < n-1 {
		t.Errorf("lookups{backoff} = %v", v)
	}
	// The relaying goes on meanwhile.
	t0 := time.Now()
	exchange(t, relay, peer.LocalAddr(), peer, "during")
	t.Logf("%d refused Allocates took %v; a relayed round trip then %v", n, took, time.Since(t0))

	s.store.setHang(false)
	time.Sleep(backoff)
	u, p := issue(s.store)
	if _, err := s.client(t, u, p).Allocate(); err != nil {
		t.Fatalf("after the backoff, with the store back: %v", err)
	}
}

// tcpAllocate allocates over a TCP connection of its own.
func tcpAllocate(t *testing.T, s *testServer, user, pass string) net.PacketConn {
	t.Helper()
	tc := dial(t, s)
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: tc.RemoteAddr().String(), TURNServerAddr: tc.RemoteAddr().String(), Conn: turn.NewSTUNConn(tc),
		Username: user, Password: pass, Realm: testRealm, LoggerFactory: pionLogs{slog.New(slog.DiscardHandler)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	return relay
}

// flood sends n requests from conn to the server and counts the answers.
func flood(t *testing.T, conn *net.UDPConn, server *net.UDPAddr, n int, req func() []byte) int {
	t.Helper()
	for range n {
		if _, err := conn.WriteToUDP(req(), server); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 2000)
	for {
		if err := conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Read(buf); err != nil {
			return got
		}
		got++
	}
}

// Responses to sources without an allocation are limited per address
// (Binding answers more strictly), then per /24: a flood from (or
// spoofed as) one address leaves its neighbours answered. A client with
// an allocation is answered all the same.
func TestUnauthenticatedResponseLimit(t *testing.T) {
	// Per address 10 a second (Binding answers 4), per /24 40.
	s := start(t, func(c *Config) { c.UnauthenticatedResponsesPerPrefix = 40 }, nil)
	rc := allocated(t, s) // uses 1 of 127.0.0.1's 10: the 401
	server, _ := net.ResolveUDPAddr("udp4", s.addr)
	listen := func(ip string) *net.UDPConn {
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	binding := func() []byte { return stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw }
	allocate := func() []byte {
		return stun.MustBuild(stun.TransactionID, stun.NewType(stun.MethodAllocate, stun.ClassRequest), transportUDP, stun.Fingerprint).Raw
	}

	// A flood of one address, and right after it its neighbour in the
	// /24, which is answered: the flood used 127.0.0.1's buckets, hardly
	// its network's.
	flooder, neighbour := listen("127.0.0.1"), listen("127.0.0.2")
	for range 100 {
		if _, err := flooder.WriteToUDP(binding(), server); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(30 * time.Millisecond) // the flood is read
	if got := flood(t, neighbour, server, 4, binding); got != 4 {
		t.Errorf("%d of 4 Binding requests of the flooded address's neighbour answered", got)
	}
	if got := flood(t, flooder, server, 0, nil); got > 7 || got == 0 {
		t.Errorf("%d of 100 Binding requests of one address answered, want about 4", got)
	}
	if got := flood(t, flooder, server, 60, allocate); got > 12 || got == 0 {
		t.Errorf("%d of 60 Allocate requests of one address answered, want about 6", got)
	}
	if v := testutil.ToFloat64(s.m.respDropped); v < 130 {
		t.Errorf("responses_dropped = %v", v)
	}
	// The /24's budget still binds the network: a few addresses each
	// within their own rate exhaust it.
	var conns []*net.UDPConn
	for i := 3; i < 13; i++ {
		conn := listen("127.0.0." + strconv.Itoa(i))
		conns = append(conns, conn)
	}
	for _, conn := range conns {
		for range 10 {
			if _, err := conn.WriteToUDP(allocate(), server); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := 0
	for _, conn := range conns {
		got += flood(t, conn, server, 0, nil)
	}
	if got > 50 {
		t.Errorf("%d of 100 Allocate requests of 10 addresses of a /24 answered, want about 40", got)
	}
	rc.tries = 1 // a dropped answer is a failure
	for range 10 {
		if res := rc.do(t, stun.MethodRefresh, lifetime(600)); res == nil || res.Type.Class != stun.ClassSuccessResponse {
			t.Fatalf("refresh of an allocated client: %v", res)
		}
	}
}

// admit reserves: a second Allocate admitted before the first is made
// counts the first.
func TestAdmitReserves(t *testing.T) {
	cfg := testConfig()
	cfg.MaxAllocationsPerAccount, cfg.MaxAllocationsPerIP = 1, 1
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := newRelays(&cfg, newPeerPolicy(nil))
	ip, ip2 := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	src := func(port uint16, a netip.Addr) pendKey { return pendKey{src: srcKey{ap: netip.AddrPortFrom(a, port)}} }
	if reason := r.admit(src(1, ip), ip, "a", 0); reason != "" {
		t.Fatal(reason)
	}
	if reason := r.admit(src(2, ip), ip, "b", 0); reason != refusedQuotaIP {
		t.Errorf("second of one IP: %q", reason)
	}
	if reason := r.admit(src(3, ip2), ip2, "a", 0); reason != refusedQuotaAccount {
		t.Errorf("second of one account: %q", reason)
	}
	r.release(src(1, ip))
	if reason := r.admit(src(2, ip), ip, "a", 0); reason != "" {
		t.Errorf("after the release: %q", reason)
	}
}

// closedSoon reports whether the server closes c within d.
func closedSoon(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	_, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return true
}

func dial(t *testing.T, s *testServer) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.TCPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestTCPConnectionBounds(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxTCPConnectionsPerIP = 2 }, nil)
	a, b := dial(t, s), dial(t, s)
	if !closedSoon(t, dial(t, s), time.Second) {
		t.Error("third connection of one IP kept")
	}
	if closedSoon(t, a, 100*time.Millisecond) || closedSoon(t, b, 100*time.Millisecond) {
		t.Error("a connection within the bound closed")
	}
	if v := testutil.ToFloat64(s.m.tcpRefused.WithLabelValues(tcpRefusedIP)); v != 1 {
		t.Errorf("tcp_refused{ip} = %v", v)
	}
	_ = a.Close()
	waitFor(t, "the slot to free", func() bool { return len(s.tcpSlots) == 1 })
	if closedSoon(t, dial(t, s), 100*time.Millisecond) {
		t.Error("a freed slot is not usable")
	}

	s2 := start(t, func(c *Config) { c.MaxTCPConnections = 2 }, nil)
	dial(t, s2)
	dial(t, s2)
	if !closedSoon(t, dial(t, s2), time.Second) {
		t.Error("connection over max_tcp_connections kept")
	}
	if v := testutil.ToFloat64(s2.m.tcpRefused.WithLabelValues(tcpRefusedSlots)); v != 1 {
		t.Errorf("tcp_refused{slots} = %v", v)
	}
}

// A TCP connection must complete each STUN message soon, and must have an
// allocation soon after its accept, however busy it keeps.
func TestTCPDeadlines(t *testing.T) {
	const msg, unalloc = 400 * time.Millisecond, 2500 * time.Millisecond
	s := start(t, nil, nil, func(o *Options) { o.tcpMessage, o.tcpUnallocated = msg, unalloc })
	binding := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw

	silent := dial(t, s)
	t0 := time.Now()
	if !closedSoon(t, silent, 3*time.Second) {
		t.Fatal("silent connection kept")
	}
	t.Logf("silent connection closed after %v", time.Since(t0))

	// Slowloris: a byte at a time, never complete in time.
	slow := dial(t, s)
	t0 = time.Now()
	for i := 0; i < len(binding) && time.Since(t0) < 2*time.Second; i++ {
		if _, err := slow.Write(binding[i : i+1]); err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !closedSoon(t, slow, 100*time.Millisecond) || time.Since(t0) > msg+time.Second {
		t.Errorf("dribbling connection kept for %v", time.Since(t0))
	}

	junk := dial(t, s)
	if _, err := junk.Write([]byte(strings.Repeat("GET / HTTP/1.1\r\n", 2))); err != nil {
		t.Fatal(err)
	}
	if !closedSoon(t, junk, time.Second) {
		t.Error("a connection not speaking STUN kept")
	}

	// A later message must be complete soon after its first byte too.
	binder := dial(t, s)
	if _, err := binder.Write(binding); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 200)
	if err := binder.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := binder.Read(buf); err != nil {
		t.Fatalf("binding over TCP: %v", err)
	}
	if _, err := binder.Write(binding[:10]); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	if !closedSoon(t, binder, unalloc) {
		t.Fatal("a connection with a message begun and never finished kept")
	}
	if d := time.Since(t0); d > msg+500*time.Millisecond {
		t.Errorf("a message begun and never finished kept the connection %v", d)
	}

	// Busy without an allocation: a Binding request every 200 ms keeps
	// nothing open past unalloc after the accept.
	busy := dial(t, s)
	t0 = time.Now()
	answered := 0
	for time.Since(t0) < 3*unalloc {
		if _, err := busy.Write(binding); err != nil {
			break
		}
		if err := busy.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if _, err := busy.Read(buf); err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				break // closed
			}
		} else {
			answered++
		}
		time.Sleep(200 * time.Millisecond)
	}
	if d := time.Since(t0); d < unalloc-300*time.Millisecond || d > unalloc+time.Second {
		t.Errorf("a busy connection without an allocation kept %v (%d answers), want about %v", d, answered, unalloc)
	}
	waitFor(t, "the slots to free", func() bool { return len(s.tcpSlots) == 0 })

	// With an allocation, the connection may stay and idle longer.
	user, pass := issue(s.store)
	relay := tcpAllocate(t, s, user, pass)
	time.Sleep(unalloc + msg)
	peer := udpPeer(t)
	exchange(t, relay, peer.LocalAddr(), peer, "after idling")
}

// pion's framing of a TCP stream (turn.STUNConn) sizes a message in 16
// bits: a length that wraps the size to 0 has its read loop hand out
// empty messages forever, never reading again, at full CPU, the slot never
// freed. Such a message closes the connection before pion sees it.
func TestTCPFrameSizeWrap(t *testing.T) {
	s := start(t, nil, nil)
	binding := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
	wrapSTUN := append([]byte(nil), binding[:20]...)
	binary.BigEndian.PutUint16(wrapSTUN[2:4], 0x10000-20) // 20 + length = 0 in 16 bits
	wrapChannel := []byte{0x40, 0x00, 0xff, 0xfc, 0, 0, 0, 0, 0, 0, 0, 0}
	for name, stream := range map[string][]byte{
		"first STUN":    wrapSTUN,
		"later STUN":    append(append([]byte(nil), binding...), wrapSTUN...),
		"later channel": append(append([]byte(nil), binding...), wrapChannel...),
	} {
		c := dial(t, s)
		if _, err := c.Write(stream); err != nil {
			t.Fatal(err)
		}
		if !closedSoon(t, c, 2*time.Second) {
			t.Errorf("%s: a message whose size wraps kept the connection", name)
		}
	}
	waitFor(t, "the slots to free", func() bool { return len(s.tcpSlots) == 0 })
}

// pion's channel-bind timer errors format the peer with %x: hex of its
// text, which the address shapes miss.
func TestPionLogMasksHex(t *testing.T) {
	log, _, buf := logtest.New(false)
	l := pionLogs{log}.NewLogger("turn")
	peer := &net.UDPAddr{IP: net.IPv4(203, 0, 113, 5), Port: 5000}
	l.Errorf("Failed to remove ChannelBind for %v %x %v", 0x4000, peer, "203.0.113.9:3478-198.51.100.1:1234")
	l.Warnf("peer %x", peer.IP.To4())
	out := buf.String()
	if !strings.Contains(out, "Failed to remove ChannelBind") {
		t.Fatalf("message dropped, the test sees nothing: %s", out)
	}
	if leaks := logtest.Leaks(out, hex.EncodeToString([]byte(peer.String())), hex.EncodeToString(peer.IP.To4()),
		"203.0.113", "198.51.100"); len(leaks) > 0 {
		t.Errorf("leaks %v in %s", leaks, out)
	}
}

// chunkConn hands data to pion's framing in reads of step bytes, each
// through a tcpConn's track as tcpConn.Read does.
type chunkConn struct {
	net.Conn // nil: pion's framing calls Read and RemoteAddr only
	data     []byte
	step     int
	tc       tcpConn
	given    int // bytes given to pion
	msgs     int // messages track completed in what it gave
	seen     int // bytes of the message under way in what it gave
	terr     error
}

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(c.step, len(c.data), len(p))
	if err := c.tc.track(c.data[:n]); err != nil {
		c.terr = err
		return 0, err
	}
	copy(p, c.data[:n])
	c.data = c.data[n:]
	c.given += n
	c.msgs, c.seen = c.tc.msgs, c.tc.seen
	return n, nil
}

func (c *chunkConn) RemoteAddr() net.Addr { return &net.TCPAddr{} }

// track cuts the stream into the messages pion's framing cuts it into,
// through any split of the stream, refuses what pion would loop on, and
// refuses a stream whose first message is not STUN.
func FuzzTCPFraming(f *testing.F) {
	binding := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw
	f.Add(binding, uint8(1))
	f.Add(append(append([]byte(nil), binding...), 0x40, 0x01, 0, 5, 1, 2, 3, 4, 5, 0, 0, 0), uint8(7))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), uint8(7))
	f.Add([]byte{0x40, 0, 0, 4, 1, 2, 3, 4}, uint8(3))
	wrap := append([]byte(nil), binding[:20]...)
	binary.BigEndian.PutUint16(wrap[2:4], 0xffec)
	f.Add(append(append([]byte(nil), binding...), wrap...), uint8(20))
	f.Add(append(append([]byte(nil), binding...), 0x40, 0, 0xff, 0xfc, 0, 0, 0, 0, 0), uint8(40))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		c := &chunkConn{data: data, step: max(int(step), 1)}
		sc := turn.NewSTUNConn(c)
		buf := make([]byte, 1600)
		frames, consumed := 0, 0
		for range len(data) + 2 {
			n, _, err := sc.ReadFrom(buf)
			if err != nil {
				if c.terr == nil && !errors.Is(err, io.EOF) {
					t.Fatalf("pion refused what track took: %v", err)
				}
				break
			}
			if n == 0 {
				t.Fatal("pion's framing returned an empty message: it would loop on it")
			}
			frames++
			consumed += n
		}
		if frames != c.msgs || consumed+c.seen != c.given {
			t.Fatalf("pion cut %d messages of %d bytes of %d given, track %d and %d under way", frames, consumed, c.given, c.msgs, c.seen)
		}
		if len(data) >= 20 {
			stunHeader := data[0]&0xc0 == 0 && stun.IsMessage(data[:20])
			if !stunHeader != errors.Is(c.terr, errNotSTUN) {
				t.Fatalf("first message STUN %v, track's error %v", stunHeader, c.terr)
			}
		}
	})
}
