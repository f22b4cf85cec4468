package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"github.com/pion/turn/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/turncred"
)

const testRealm = "chat.example"

var testSecret = []byte("0123456789abcdef0123456789abcdef")

// fakeStore answers TurnCredentialAccount from the accounts of usable
// expiries.
type fakeStore struct {
	mu      sync.Mutex
	owner   map[int64]string // "": not usable (blocked, deleted, never issued)
	err     error
	hang    bool // answer only when the query's context ends
	lookups int
	during  func() // called in a query, after the store was read
}

func newFakeStore() *fakeStore { return &fakeStore{owner: map[int64]string{}} }

func (f *fakeStore) TurnCredentialAccount(ctx context.Context, expiry int64, now time.Time) (string, error) {
	f.mu.Lock()
	f.lookups++
	hang, err, owner, during := f.hang, f.err, f.owner[expiry], f.during
	f.mu.Unlock()
	if during != nil {
		during()
	}
	if hang {
		<-ctx.Done()
		return "", ctx.Err()
	}
	if err != nil {
		return "", err
	}
	if expiry <= now.Unix() || owner == "" {
		return "", accounts.ErrNotFound
	}
	return owner, nil
}

// set makes the credential expiry usable (by an account of its own) or
// not.
func (f *fakeStore) set(expiry int64, ok bool) {
	owner := ""
	if ok {
		owner = "user" + strconv.FormatInt(expiry, 10) + "@" + testRealm
	}
	f.setOwner(expiry, owner)
}

func (f *fakeStore) setOwner(expiry int64, owner string) {
	f.mu.Lock()
	f.owner[expiry] = owner
	f.mu.Unlock()
}

func (f *fakeStore) setHang(on bool) {
	f.mu.Lock()
	f.hang = on
	f.mu.Unlock()
}

func (f *fakeStore) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *fakeStore) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lookups
}

var nextExpiry = time.Now().Unix() + 5*86400

// issue records a new usable credential of a new account in store and
// returns it.
func issue(store *fakeStore) (user, pass string) {
	nextExpiry++
	store.set(nextExpiry, true)
	user = turncred.Username(nextExpiry)
	return user, turncred.Password(testSecret, user)
}

// issueFor records a new usable credential of account in store.
func issueFor(store *fakeStore, account string) (user, pass string) {
	nextExpiry++
	store.setOwner(nextExpiry, account)
	user = turncred.Username(nextExpiry)
	return user, turncred.Password(testSecret, user)
}

type testServer struct {
	*Server
	store *fakeStore
	reg   *prometheus.Registry
	addr  string // UDP
}

func testConfig() Config {
	cfg := DefaultConfig()
	cfg.ListenUDP = []string{"127.0.0.1:0"}
	cfg.ListenTCP = []string{"127.0.0.1:0"}
	cfg.UDPSockets = 2
	cfg.AllowPeers = []string{"127.0.0.0/8"}
	cfg.MaxBandwidthPerAllocation = 0
	cfg.Metrics = "127.0.0.1:0"
	// Every test client comes from 127.0.0.1: the per-source limits are
	// off unless a test is about them.
	cfg.MaxAllocationsPerIP = 1000
	cfg.AllocationRatePerIP = 0
	cfg.MaxTCPConnectionsPerIP = 1000
	cfg.UnauthenticatedResponsesPerPrefix = 0
	cfg.StoreBackoff = 0
	return cfg
}

func start(t testing.TB, mod func(*Config), log *slog.Logger, opts ...func(*Options)) *testServer {
	t.Helper()
	cfg := testConfig()
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	udp, tcp, err := Listen(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	store := newFakeStore()
	reg := prometheus.NewRegistry()
	o := Options{
		Config: &cfg, Realm: testRealm, Secret: testSecret, Store: store,
		Log: log, Registry: reg,
	}
	for _, f := range opts {
		f(&o)
	}
	srv, err := New(o, udp, tcp)
	if err != nil {
		t.Fatal(err)
	}
	srv.WatchingChanges(true)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := srv.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &testServer{Server: srv, store: store, reg: reg, addr: srv.UDPAddrs()[0].String()}
}

// client returns a pion TURN client of the server over UDP.
func (s *testServer) client(t *testing.T, user, pass string) *turn.Client {
	t.Helper()
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: s.addr, TURNServerAddr: s.addr, Conn: conn,
		Username: user, Password: pass, Realm: testRealm, RTO: 200 * time.Millisecond,
		LoggerFactory: pionLogs{slog.New(slog.DiscardHandler)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); _ = conn.Close() })
	return c
}

func (s *testServer) refused(reason string) float64 {
	return testutil.ToFloat64(s.Server.m.refused.WithLabelValues(reason))
}

func udpPeer(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// exchange sends msg on from to to until one arrives on recv (UDP may drop
// the first while the permission is being made), and returns its text
// and source.
func exchange(t *testing.T, from net.PacketConn, to net.Addr, recv net.PacketConn, msg string) (string, net.Addr) {
	t.Helper()
	buf := make([]byte, 2000)
	for range 50 {
		if _, err := from.WriteTo([]byte(msg), to); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		if err := recv.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		n, a, err := recv.ReadFrom(buf)
		if err == nil {
			return string(buf[:n]), a
		}
	}
	t.Fatalf("%q never arrived", msg)
	return "", nil
}

func TestRelayBetweenClientAndPeer(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	relay, err := s.client(t, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	peer := udpPeer(t)
	if got, from := exchange(t, relay, peer.LocalAddr(), peer, "to peer"); got != "to peer" || from.String() != relay.LocalAddr().String() {
		t.Fatalf("peer got %q from %v, want from the relay %v", got, from, relay.LocalAddr())
	}
	if got, from := exchange(t, peer, relay.LocalAddr(), relay, "to client"); got != "to client" || from.String() != peer.LocalAddr().String() {
		t.Fatalf("client got %q from %v", got, from)
	}
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations live, want 1", n)
	}
	if v := testutil.ToFloat64(s.m.created); v != 1 {
		t.Errorf("created = %v", v)
	}
	// The relay counts a datagram after the kernel took it: the peer may
	// have it first.
	waitFor(t, "the traffic to be counted", func() bool {
		tr := s.relays.traffic()
		return tr.toPeerPackets > 0 && tr.fromPeerPackets > 0 && tr.toPeerBytes >= 7 && tr.fromPeerBytes >= 9
	})
	if err := relay.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	if v := testutil.ToFloat64(s.m.active); v != 0 {
		t.Errorf("active = %v after the client left", v)
	}
}

// Two clients, each with its own allocation, relay to each other's relayed
// address, as two WebRTC peers both behind TURN do.
func TestRelayBetweenTwoClients(t *testing.T) {
	s := start(t, nil, nil)
	ua, pa := issue(s.store)
	ub, pb := issue(s.store)
	ra, err := s.client(t, ua, pa).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	rb, err := s.client(t, ub, pb).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	// Each side must permit the other before datagrams pass both ways.
	for range 3 {
		_, _ = ra.WriteTo([]byte("hello"), rb.LocalAddr())
		_, _ = rb.WriteTo([]byte("hello"), ra.LocalAddr())
	}
	if got, _ := exchange(t, ra, rb.LocalAddr(), rb, "a to b"); got != "a to b" && got != "hello" {
		t.Fatalf("b got %q", got)
	}
	if got, _ := exchange(t, rb, ra.LocalAddr(), ra, "b to a"); got != "b to a" && got != "hello" {
		t.Fatalf("a got %q", got)
	}
}

func TestRelayOverTCP(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	tc, err := net.Dial("tcp", s.TCPAddrs()[0].String())
	if err != nil {
		t.Fatal(err)
	}
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
	defer c.Close()
	relay, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	peer := udpPeer(t)
	exchange(t, relay, peer.LocalAddr(), peer, "over tcp")
	exchange(t, peer, relay.LocalAddr(), relay, "back")
}

func TestRefusedCredentials(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	unknown := turncred.Username(time.Now().Unix() + 3600)
	expired := turncred.Username(time.Now().Unix() - 10)
	s.store.set(time.Now().Unix()-10, true)
	for _, c := range []struct {
		name, user, pass, reason string
	}{
		{"forged password", user, turncred.Password([]byte("not the secret"), user), refusedPassword},
		{"garbage password", user, pass + "x", refusedPassword},
		{"expired", expired, turncred.Password(testSecret, expired), refusedExpired},
		{"never issued", unknown, turncred.Password(testSecret, unknown), refusedUnusable},
		{"not an expiry", "alice", turncred.Password(testSecret, "alice"), refusedMalformed},
		{"leading zero", "0" + user, turncred.Password(testSecret, "0"+user), refusedMalformed},
		{"rest username", user + ":alice", turncred.Password(testSecret, user+":alice"), refusedMalformed},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := s.refused(c.reason)
			if _, err := s.client(t, c.user, c.pass).Allocate(); err == nil {
				t.Fatal("allocated")
			}
			if got := s.refused(c.reason); got != before+1 {
				t.Errorf("refused{reason=%q} went from %v to %v, want +1", c.reason, before, got)
			}
		})
	}
	if n := s.Allocations(); n != 0 {
		t.Fatalf("%d allocations live", n)
	}
	// The right one still works: the refusals above are not an accident.
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatal(err)
	}
}

func TestRefusedBlockedAccount(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	exp, _ := turncred.ParseUsername(user)
	s.store.set(exp, false) // blocked or deleted: the store says no
	if _, err := s.client(t, user, pass).Allocate(); err == nil {
		t.Fatal("allocated with the credential of a blocked account")
	}
	if v := s.refused(refusedUnusable); v != 1 {
		t.Errorf("refused{unusable} = %v", v)
	}
}

func TestStoreErrorRefuses(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	s.store.setErr(errors.New("connection refused"))
	if _, err := s.client(t, user, pass).Allocate(); err == nil {
		t.Fatal("allocated while the store failed")
	}
	if v := s.refused(refusedStore); v != 1 {
		t.Errorf("refused{store} = %v", v)
	}
	s.store.setErr(nil)
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatalf("after the store came back: %v", err)
	}
}

func TestNotReadyRefuses(t *testing.T) {
	var ready atomic.Bool
	s := start(t, nil, nil, func(o *Options) { o.Ready = ready.Load })
	user, pass := issue(s.store)
	if _, err := s.client(t, user, pass).Allocate(); err == nil {
		t.Fatal("allocated before the schema was ready")
	}
	if v := s.refused(refusedNotReady); v != 1 {
		t.Errorf("refused{not_ready} = %v", v)
	}
	ready.Store(true)
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatalf("once ready: %v", err)
	}
}

func TestForbiddenPeers(t *testing.T) {
	s := start(t, func(c *Config) { c.AllowPeers = nil }, nil)
	user, pass := issue(s.store)
	c := s.client(t, user, pass)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	for _, peer := range []string{"127.0.0.1:9", "10.1.2.3:9", "192.168.1.1:9", "172.16.0.1:9", "100.64.0.1:9",
		"169.254.169.254:80", "0.0.0.0:9", "255.255.255.255:9", "224.0.0.1:9", "[::ffff:127.0.0.1]:9", "[::1]:9",
		"[fc00::1]:9", "[fe80::1]:9", s.addr} {
		a, err := net.ResolveUDPAddr("udp", peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CreatePermission(a); err == nil {
			t.Errorf("permission to %s granted", peer)
		}
		if _, err := relay.WriteTo([]byte("x"), a); err == nil {
			t.Errorf("relayed to %s", peer)
		}
	}
	// A public address is allowed (nothing is sent to it).
	if err := c.CreatePermission(&net.UDPAddr{IP: net.IPv4(8, 8, 8, 8), Port: 53}); err != nil {
		t.Fatalf("permission to a public address: %v", err)
	}
	if v := testutil.ToFloat64(s.m.permRefused.WithLabelValues(refusedPeer)); v < 14 {
		t.Errorf("permissions_refused = %v", v)
	}
}

// A ChannelBind to a forbidden peer goes through the permission handler
// too: sent raw, since pion's client asks for a permission first.
func TestChannelBindForbiddenPeer(t *testing.T) {
	s := start(t, func(c *Config) { c.AllowPeers = []string{"127.0.0.2/32"} }, nil)
	user, pass := issue(s.store)
	rc := newRawClient(t, s.addr, user, pass)
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	bind := func(ch uint16, ip string) *stun.Message {
		return rc.do(t, stun.MethodChannelBind, channel(ch), peerAddr(net.ParseIP(ip), 9))
	}
	for i, ip := range []string{"127.0.0.1", "::ffff:127.0.0.1", "10.0.0.1", "169.254.169.254"} {
		if res := bind(0x4000+uint16(i), ip); res.Type.Class != stun.ClassErrorResponse {
			t.Errorf("channel bound to %s", ip)
		}
	}
	if res := bind(0x4010, "127.0.0.2"); res.Type.Class != stun.ClassSuccessResponse {
		t.Errorf("channel to an allowed peer refused: %v", res)
	}
}

// The quota is the account's: its two credentials (the old one and the
// one reissued after half its lifetime) share it.
func TestQuotaPerAccount(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxAllocationsPerAccount = 2 }, nil)
	const account = "alice@" + testRealm
	user, pass := issueFor(s.store, account)
	u1, p1 := issueFor(s.store, account)
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.client(t, u1, p1).Allocate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][2]string{{user, pass}, {u1, p1}} {
		if _, err := s.client(t, c[0], c[1]).Allocate(); err == nil {
			t.Fatal("third allocation of one account")
		}
	}
	if v := s.refused(refusedQuotaAccount); v != 2 {
		t.Errorf("refused{quota_account} = %v", v)
	}
	// Another credential is not held back.
	u2, p2 := issue(s.store)
	if _, err := s.client(t, u2, p2).Allocate(); err != nil {
		t.Fatal(err)
	}
}

// One client address reaching two listen addresses at once: the
// reservations of the two Allocates are apart (each is the pair's), so the
// account's quota counts both; an allocation the quota handler admitted
// none for is ended, not counted under no account.
func TestReservationPerServerAddress(t *testing.T) {
	cfg := testConfig()
	cfg.MaxAllocationsPerAccount = 1
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	r := newRelays(&cfg, newPeerPolicy(nil))
	r.m = NewMetrics(prometheus.NewRegistry(), r)
	src := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 5000}
	dstA := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3478}
	dstB := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 3479}
	ip := sourceIP(src)
	const account = "victim@x"
	if reason := r.admit(pendKeyOf(src, dstA), ip, account, 0); reason != "" {
		t.Fatal(reason)
	}
	// The second listener's Allocate, admitted while the first is made.
	if reason := r.admit(pendKeyOf(src, dstB), ip, account, 0); reason != refusedQuotaAccount {
		t.Errorf("the same client at a second listener: %q", reason)
	}
	user := turncred.Username(time.Now().Unix() + 3600)
	relay := func() int {
		t.Helper()
		c, _, err := r.AllocatePacketConn("udp4", 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c.(*relayConn).port
	}
	if _, err := r.attach(relay(), user, src, dstA); err != nil {
		t.Fatal(err)
	}
	// pion made the second anyway (as if the quota handler had let it).
	portB := relay()
	if _, err := r.attach(portB, user, src, dstB); !errors.Is(err, errUnreserved) {
		t.Errorf("attach without a reservation: %v", err)
	}
	if n := r.count(); n != 1 {
		t.Errorf("%d allocations", n)
	}
	if r.get(portB) != nil {
		t.Error("the allocation without a reservation is not ended")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if want := map[string]int{account: 1}; !reflect.DeepEqual(r.byAccount, want) {
		t.Errorf("byAccount %v, want %v", r.byAccount, want)
	}
}

// The quota handler tells the listen address an Allocate reached: a client
// allocates at one of two, and its account's quota of 1 refuses it at the
// other.
func TestQuotaPerAccountTwoListeners(t *testing.T) {
	s := start(t, func(c *Config) {
		c.MaxAllocationsPerAccount = 1
		c.ListenUDP = []string{"127.0.0.1:0", "127.0.0.1:0"}
	}, nil)
	user, pass := issueFor(s.store, "victim@"+testRealm)
	rc := newRawClient(t, s.UDPAddrs()[0].String(), user, pass)
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	other := s.UDPAddrs()[len(s.UDPAddrs())-1].(*net.UDPAddr)
	if other.Port == rc.server.Port {
		t.Fatal("one listen address")
	}
	rc.server = other
	res := rc.do(t, stun.MethodAllocate, transportUDP)
	var code stun.ErrorCodeAttribute
	if res.Type.Class != stun.ClassErrorResponse || code.GetFrom(res) != nil || code.Code != stun.CodeAllocQuotaReached {
		t.Errorf("second allocation of the account at the other listener: %s", res)
	}
	if n := s.Allocations(); n != 1 {
		t.Errorf("%d allocations", n)
	}
}

// A block that commits while an Allocate's lookup is under way: the
// lookup read the store before it, the block's recheck ran before the
// allocation was made; the allocation is checked again at once, not at
// the next recheck_interval.
func TestBlockDuringLookup(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	exp, _ := turncred.ParseUsername(user)
	var once sync.Once
	s.store.mu.Lock()
	s.store.during = func() {
		once.Do(func() {
			s.store.set(exp, false)
			s.creds.drop(true)                 // the block's notification
			s.recheckAll(context.Background()) // and its recheck, which finds nothing yet
		})
	}
	s.store.mu.Unlock()
	rc := newRawClient(t, s.addr, user, pass)
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	if v := testutil.ToFloat64(s.m.revoked.WithLabelValues(revokedUnusable)); v != 1 {
		t.Errorf("revoked{unusable} = %v", v)
	}
}

func TestQuotaTotal(t *testing.T) {
	s := start(t, func(c *Config) { c.MaxAllocations = 3 }, nil)
	var relays []net.PacketConn
	for i := range 3 {
		u, p := issue(s.store)
		r, err := s.client(t, u, p).Allocate()
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		relays = append(relays, r)
	}
	u, p := issue(s.store)
	if _, err := s.client(t, u, p).Allocate(); err == nil {
		t.Fatal("allocation over max_allocations")
	}
	if v := s.refused(refusedQuotaAll); v != 1 {
		t.Errorf("refused{quota_all} = %v", v)
	}
	// A freed slot is usable again.
	if err := relays[0].Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the slot to free", func() bool { return s.Allocations() == 2 })
	if _, err := s.client(t, u, p).Allocate(); err != nil {
		t.Fatal(err)
	}
}

func TestBandwidthLimit(t *testing.T) {
	const rate = 20_000
	s := start(t, func(c *Config) { c.MaxBandwidthPerAllocation = rate }, nil)
	user, pass := issue(s.store)
	relay, err := s.client(t, user, pass).Allocate()
	if err != nil {
		t.Fatal(err)
	}
	peer := udpPeer(t)
	exchange(t, relay, peer.LocalAddr(), peer, "open")
	exchange(t, peer, relay.LocalAddr(), relay, "open")

	const size, count = 1000, 300 // 300 kB, 15 seconds' worth
	payload := bytes.Repeat([]byte("x"), size)
	measure := func(from net.PacketConn, to net.Addr, recv net.PacketConn) (int, float64) {
		start := time.Now()
		for range count {
			if _, err := from.WriteTo(payload, to); err != nil {
				t.Fatal(err)
			}
		}
		got := 0
		buf := make([]byte, 2000)
		for {
			if err := recv.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
				t.Fatal(err)
			}
			n, _, err := recv.ReadFrom(buf)
			if err != nil {
				break
			}
			got += n
		}
		return got, time.Since(start).Seconds()
	}
	for _, dir := range []struct {
		name     string
		from     net.PacketConn
		to       net.Addr
		recv     net.PacketConn
		loopback bool
	}{
		{"from peer", peer, relay.LocalAddr(), relay, true},
		{"to peer", relay, peer.LocalAddr(), peer, false},
	} {
		got, secs := measure(dir.from, dir.to, dir.recv)
		// At most the bucket (one second's worth) and what refilled
		// meanwhile, plus a datagram of slack.
		if limit := rate*(1+secs) + size; float64(got) > limit {
			t.Errorf("%s: %d bytes passed in %.2fs, limit %.0f", dir.name, got, secs, limit)
		}
		if got < size {
			t.Errorf("%s: nothing passed", dir.name)
		}
		t.Logf("%s: %d of %d bytes in %.2fs", dir.name, got, size*count, secs)
	}
	if v := testutil.ToFloat64(s.m.dropped.WithLabelValues("bandwidth")); v == 0 {
		t.Error("no drop counted")
	}
}

// A blocked account's live allocation: pion re-authenticates Refresh,
// CreatePermission and ChannelBind with the auth handler only (no store
// query), so the allocation would go on until its lifetime ends; turnd
// ends it when the store announces the change.
func TestBlockedAccountAllocationEnds(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	exp, _ := turncred.ParseUsername(user)
	rc := newRawClient(t, s.addr, user, pass)
	res := rc.do(t, stun.MethodAllocate, transportUDP)
	if res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	var relayed stun.XORMappedAddress
	if err := relayed.GetFromAs(res, stun.AttrXORRelayedAddress); err != nil {
		t.Fatal(err)
	}
	s.store.set(exp, false)
	// Without a notification, a Refresh still passes: the allocation
	// would live on to the end of its lifetime.
	if res := rc.do(t, stun.MethodRefresh, lifetime(600)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("refresh: %s", res)
	}
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations", n)
	}
	s.AccountChanged("someone@" + testRealm)
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	if v := testutil.ToFloat64(s.m.revoked.WithLabelValues(revokedUnusable)); v != 1 {
		t.Errorf("revoked{unusable} = %v", v)
	}
	// The relay port is closed and the client's next request fails.
	rc.tries = 2
	if res := rc.do(t, stun.MethodRefresh, lifetime(600)); res != nil {
		t.Errorf("refresh after the end answered: %s", res)
	}
	if c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: relayed.IP, Port: relayed.Port}); err != nil {
		t.Errorf("relay port still bound: %v", err)
	} else {
		_ = c.Close()
	}
}

// pion's own handling of a credential refused during an allocation's life
// (here: expired): the Refresh is refused, yet the allocation stays until
// its lifetime ends; turnd's recheck ends it.
func TestExpiredCredentialAllocationEnds(t *testing.T) {
	s := start(t, nil, nil)
	exp := time.Now().Unix() + 2
	s.store.set(exp, true)
	user := turncred.Username(exp)
	rc := newRawClient(t, s.addr, user, turncred.Password(testSecret, user))
	if res := rc.do(t, stun.MethodAllocate, transportUDP); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatalf("allocate: %s", res)
	}
	for time.Now().Unix() < exp {
		time.Sleep(100 * time.Millisecond)
	}
	if res := rc.do(t, stun.MethodRefresh, lifetime(600)); res.Type.Class != stun.ClassErrorResponse {
		t.Fatalf("refresh with an expired credential: %s", res)
	}
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations after a refused refresh; pion changed: update the package doc", n)
	}
	s.recheckAll(context.Background())
	if n := s.Allocations(); n != 0 {
		t.Fatalf("%d allocations after the credential expired", n)
	}
	if v := testutil.ToFloat64(s.m.revoked.WithLabelValues(revokedExpired)); v != 1 {
		t.Errorf("revoked{expired} = %v", v)
	}
}

// A store error during a recheck leaves live allocations alone.
func TestRecheckStoreErrorKeepsAllocations(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	if _, err := s.client(t, user, pass).Allocate(); err != nil {
		t.Fatal(err)
	}
	s.store.setErr(errors.New("down"))
	s.WatchingChanges(false)
	s.recheckAll(context.Background())
	if n := s.Allocations(); n != 1 {
		t.Fatalf("%d allocations", n)
	}
}

func TestCache(t *testing.T) {
	s := start(t, nil, nil)
	user, pass := issue(s.store)
	alloc := func() {
		t.Helper()
		if _, err := s.client(t, user, pass).Allocate(); err != nil {
			t.Fatal(err)
		}
	}
	alloc()
	alloc()
	if n := s.store.count(); n != 1 {
		t.Errorf("%d store lookups for two allocations while watching changes, want 1", n)
	}
	s.AccountChanged("x@" + testRealm) // drops the cache (and rechecks: one lookup)
	waitFor(t, "the recheck", func() bool { return s.store.count() >= 2 })
	s.WatchingChanges(false)
	before := s.store.count()
	alloc()
	alloc()
	if n := s.store.count() - before; n != 2 {
		t.Errorf("%d store lookups for two allocations while not watching, want 2", n)
	}
}

func TestMetricNames(t *testing.T) {
	s := start(t, nil, nil)
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
		if !strings.HasPrefix(mf.GetName(), "chatmail_turnd_") {
			t.Errorf("%s: not chatmail_turnd_", mf.GetName())
		}
		counter := mf.GetType().String() == "COUNTER"
		if counter != strings.HasSuffix(mf.GetName(), "_total") {
			t.Errorf("%s: _total on counters only", mf.GetName())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() != "reason" && l.GetName() != "direction" && l.GetName() != "source" {
					t.Errorf("%s: label %s", mf.GetName(), l.GetName())
				}
			}
		}
	}
	for _, want := range []string{"chatmail_turnd_allocations_active", "chatmail_turnd_allocations_created_total",
		"chatmail_turnd_allocations_refused_total", "chatmail_turnd_relayed_bytes_total"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("no %s in %v", want, names)
		}
	}
}

// Under No-Log nothing names a client: drive refusals, a store error and
// a revocation, and look for the client's address and username.
func TestNoLogNamesNoOne(t *testing.T) {
	log, _, buf := logtest.New(true)
	s := start(t, nil, log)
	user, pass := issue(s.store)
	c := s.client(t, user, pass)
	if _, err := c.Allocate(); err != nil {
		t.Fatal(err)
	}
	s.client(t, user, "forged").Allocate() //nolint:errcheck // refused
	s.WatchingChanges(false)               // no cached answer: the store is asked
	s.store.setErr(errors.New("store down at 10.9.8.7"))
	s.client(t, user, pass).Allocate() //nolint:errcheck // refused
	s.store.setErr(nil)
	exp, _ := turncred.ParseUsername(user)
	s.store.set(exp, false)
	s.AccountChanged("x@" + testRealm)
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	out := buf.String()
	if !strings.Contains(out, "cannot check a TURN credential") {
		t.Fatalf("the store warning is missing, the test sees nothing:\n%s", out)
	}
	if leaks := logtest.Leaks(out, user, "127.0.0.1", "10.9.8.7"); len(leaks) > 0 {
		t.Errorf("leaks %v in\n%s", leaks, out)
	}
}

func TestConfigValidate(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "relay_address") {
		t.Fatalf("defaults without relay_address: %v", err)
	}
	cfg = DefaultConfig()
	cfg.ListenUDP = []string{"[::]:3478", "192.0.2.10:3478"}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.RelayBind != "192.0.2.10" || cfg.RelayAddress != "192.0.2.10" {
		t.Errorf("relay_bind %q relay_address %q, want the specific listen address", cfg.RelayBind, cfg.RelayAddress)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.ListenUDP, c.ListenTCP = nil, nil },
		func(c *Config) { c.ListenUDP = []string{"localhost:3478"} },
		func(c *Config) { c.RelayAddress = "2001:db8::1" },
		func(c *Config) { c.RelayAddress = "0.0.0.0" },
		func(c *Config) { c.RelayBind = "::" },
		func(c *Config) { c.RelayPortMin, c.RelayPortMax = 60000, 50000 },
		func(c *Config) { c.AllowPeers = []string{"10.0.0.0/33"} },
		func(c *Config) { c.AllowPeers = []string{"::ffff:0:0/8"} },
		func(c *Config) { c.MaxAllocations = 0 },
		func(c *Config) { c.MaxAllocationsPerAccount = 0 },
		func(c *Config) { c.MaxAllocationsPerIP = 0 },
		func(c *Config) { c.MaxPermissionsPerAllocation = 0 },
		func(c *Config) { c.MaxChannelsPerAllocation = 0 },
		func(c *Config) { c.MaxTCPConnections = 0 },
		func(c *Config) { c.MaxTCPConnectionsPerIP = 0 },
		func(c *Config) { c.AllocationRatePerIP = -1 },
		func(c *Config) { c.AllocationBurstPerIP = 0 },
		func(c *Config) { c.UnauthenticatedResponsesPerPrefix = -1 },
		func(c *Config) { c.StoreTimeout = 0 },
		func(c *Config) { c.StoreTimeout = config.Duration(time.Minute) },
		func(c *Config) { c.StoreBackoff = config.Duration(time.Hour) },
		func(c *Config) { c.MaxBandwidthPerAllocation = 100 },
		func(c *Config) { c.RecheckInterval = 0 },
		func(c *Config) { c.Metrics = "0.0.0.0:9731" },
	} {
		c := DefaultConfig()
		c.RelayAddress = "198.51.100.7"
		if err := c.Validate(); err != nil {
			t.Fatalf("base: %v", err)
		}
		bad(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	// The section parses from TOML with its exact keys.
	var sec Config = DefaultConfig()
	_, err := config.Parse(`[mail]
domains = ["chat.example"]
[turnd]
listen_udp = ["0.0.0.0:3478"]
listen_tcp = []
relay_address = "198.51.100.7"
relay_bind = "10.0.0.5"
relay_port_min = 50000
relay_port_max = 50100
allow_peers = ["10.0.0.0/8"]
max_allocations_per_account = 5
max_allocations_per_ip = 7
max_allocations = 100
allocation_rate_per_ip = 30
allocation_burst_per_ip = 9
max_permissions_per_allocation = 11
max_channels_per_allocation = 12
max_tcp_connections = 13
max_tcp_connections_per_ip = 14
unauthenticated_responses_per_prefix = 15
store_timeout = "300ms"
store_backoff = "3s"
max_bandwidth_per_allocation = 0
udp_sockets = 2
recheck_interval = "30s"
metrics = "127.0.0.1:9731"
`, "turnd", &sec)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		ListenUDP: []string{"0.0.0.0:3478"}, ListenTCP: []string{}, RelayAddress: "198.51.100.7", RelayBind: "10.0.0.5",
		RelayPortMin: 50000, RelayPortMax: 50100, AllowPeers: []string{"10.0.0.0/8"},
		MaxAllocationsPerAccount: 5, MaxAllocationsPerIP: 7, MaxAllocations: 100,
		AllocationRatePerIP: 30, AllocationBurstPerIP: 9, MaxPermissionsPerAllocation: 11, MaxChannelsPerAllocation: 12,
		MaxTCPConnections: 13, MaxTCPConnectionsPerIP: 14, UnauthenticatedResponsesPerPrefix: 15,
		StoreTimeout: config.Duration(300 * time.Millisecond), StoreBackoff: config.Duration(3 * time.Second),
		UDPSockets: 2, RecheckInterval: config.Duration(30 * time.Second), Metrics: "127.0.0.1:9731",
	}
	if !reflect.DeepEqual(sec, want) {
		t.Errorf("parsed\n%+v\nwant\n%+v", sec, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawClient speaks STUN to the server itself, for requests pion's client
// does not send as a test needs them.
type rawClient struct {
	conn              *net.UDPConn
	server            *net.UDPAddr
	user, pass, nonce string
	realm             string
	tries             int // 0: retransmit until answered, else give up (nil) after that many
}

func newRawClient(t testing.TB, server, user, pass string) *rawClient {
	t.Helper()
	sa, err := net.ResolveUDPAddr("udp4", server)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawClient{conn: c, server: sa, user: user, pass: pass, realm: testRealm}
}

type setterFunc func(*stun.Message) error

func (f setterFunc) AddTo(m *stun.Message) error { return f(m) }

var transportUDP = &stun.RawAttribute{Type: stun.AttrRequestedTransport, Value: []byte{17, 0, 0, 0}}

func channel(n uint16) stun.Setter {
	return &stun.RawAttribute{Type: stun.AttrChannelNumber, Value: []byte{byte(n >> 8), byte(n), 0, 0}}
}

func lifetime(secs uint32) stun.Setter {
	return &stun.RawAttribute{Type: stun.AttrLifetime, Value: binary.BigEndian.AppendUint32(nil, secs)}
}

func peerAddr(ip net.IP, port int) stun.Setter {
	return setterFunc(func(m *stun.Message) error {
		return (&stun.XORMappedAddress{IP: ip, Port: port}).AddToAs(m, stun.AttrXORPeerAddress)
	})
}

// do sends a request with the long-term credential, fetching a nonce first
// when it has none (or a stale one), and returns the response.
func (c *rawClient) do(t testing.TB, method stun.Method, attrs ...stun.Setter) *stun.Message {
	t.Helper()
	for range 3 {
		setters := append([]stun.Setter{stun.TransactionID, stun.NewType(method, stun.ClassRequest)}, attrs...)
		if c.nonce != "" {
			setters = append(setters, stun.NewUsername(c.user), stun.NewRealm(c.realm), stun.NewNonce(c.nonce),
				stun.NewLongTermIntegrity(c.user, c.realm, c.pass))
		}
		setters = append(setters, stun.Fingerprint)
		msg := stun.MustBuild(setters...)
		res := c.roundTrip(t, msg)
		if res == nil {
			return nil
		}
		var code stun.ErrorCodeAttribute
		if res.Type.Class == stun.ClassErrorResponse && code.GetFrom(res) == nil &&
			(code.Code == stun.CodeUnauthorized || code.Code == stun.CodeStaleNonce) {
			var nonce stun.Nonce
			if nonce.GetFrom(res) == nil && string(nonce) != c.nonce {
				c.nonce = string(nonce)
				continue
			}
		}
		return res
	}
	t.Fatal("no nonce accepted")
	return nil
}

func (c *rawClient) roundTrip(t testing.TB, msg *stun.Message) *stun.Message {
	t.Helper()
	buf := make([]byte, 2000)
	tries := 10
	if c.tries > 0 {
		tries = c.tries
	}
	for range tries {
		if _, err := c.conn.WriteToUDP(msg.Raw, c.server); err != nil {
			t.Fatal(err)
		}
		if err := c.conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		for {
			n, err := c.conn.Read(buf)
			if err != nil {
				break
			}
			res := &stun.Message{Raw: append([]byte(nil), buf[:n]...)}
			if res.Decode() != nil || res.TransactionID != msg.TransactionID {
				continue
			}
			return res
		}
	}
	if c.tries == 0 {
		t.Fatalf("no answer to %s", msg)
	}
	return nil
}
