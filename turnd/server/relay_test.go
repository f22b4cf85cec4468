package server

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"
)

// channelData is a ChannelData message of channel num carrying data,
// padded to 4 bytes as pion pads it.
func channelData(num uint16, data []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, num)
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// A UDP client's ChannelData is relayed by turnd itself, both ways, as
// pion relays it: to the channel's peer from the relay address, and the
// peer's datagrams back as ChannelData of that channel, padded; a
// channel that is gone relays nothing; Send and Data indications
// (a peer with a permission and no channel) still pass through pion.
func TestChannelDataRelayed(t *testing.T) {
	s := start(t, func(c *Config) { c.UDPSockets = 1 }, nil)
	rc := allocated(t, s)
	peer := udpPeer(t)
	pa := peer.LocalAddr().(*net.UDPAddr)
	if res := rc.do(t, stun.MethodChannelBind, channel(0x4001), peerAddr(pa.IP, pa.Port)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	relay := s.onlyRelay(t)
	relayAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(relay.port))
	c := s.relays.client(clientKey{local: addrPort(s.UDPAddrs()[0]), client: rc.conn.LocalAddr().(*net.UDPAddr).AddrPort()})
	if c != relay {
		t.Fatal("the allocation is not found by its client's address")
	}
	if got, ok := c.channelPeer(0x4001); !ok || got != pa.AddrPort() {
		t.Fatalf("channel 0x4001: %v %v, want %v", got, ok, pa.AddrPort())
	}

	buf := make([]byte, 2000)
	read := func(conn *net.UDPConn) ([]byte, netip.AddrPort) {
		t.Helper()
		if err := conn.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatal(err)
		}
		return append([]byte(nil), buf[:n]...), from
	}
	for _, msg := range []string{"hello", "four", "a datagram of some length"} {
		if _, err := rc.conn.WriteToUDP(channelData(0x4001, []byte(msg)), rc.server); err != nil {
			t.Fatal(err)
		}
		if got, from := read(peer); string(got) != msg || from != relayAddr {
			t.Fatalf("peer got %q from %v, want %q from %v", got, from, msg, relayAddr)
		}
		if _, err := peer.WriteToUDPAddrPort([]byte(msg+"!"), relayAddr); err != nil {
			t.Fatal(err)
		}
		if got, _ := read(rc.conn); !bytes.Equal(got, channelData(0x4001, []byte(msg+"!"))) {
			t.Fatalf("client got %x, want ChannelData of %q", got, msg+"!")
		}
	}
	tr := s.relays.traffic()
	if tr.toPeerPackets != 3 || tr.fromPeerPackets != 3 || tr.toPeerBytes != 5+4+25 || tr.fromPeerBytes != 6+5+26 {
		t.Errorf("traffic %+v", tr)
	}

	// A channel not bound: dropped (pion's path; it finds none either).
	if _, err := rc.conn.WriteToUDP(channelData(0x4002, []byte("nowhere")), rc.server); err != nil {
		t.Fatal(err)
	}
	// A peer with a permission and no channel: a Data indication (pion's).
	other := udpPeer(t)
	oa := other.LocalAddr().(*net.UDPAddr)
	if res := rc.do(t, stun.MethodCreatePermission, peerAddr(oa.IP, oa.Port)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	if _, err := other.WriteToUDPAddrPort([]byte("indicated"), relayAddr); err != nil {
		t.Fatal(err)
	}
	got, _ := read(rc.conn)
	m := &stun.Message{Raw: got}
	if err := m.Decode(); err != nil || m.Type != stun.NewType(stun.MethodData, stun.ClassIndication) {
		t.Fatalf("client got %x, want a Data indication", got)
	}
	if d, err := m.Get(stun.AttrData); err != nil || string(d) != "indicated" {
		t.Fatalf("Data indication carries %q (%v)", d, err)
	}
	if _, err := peer.WriteToUDPAddrPort([]byte("late"), relayAddr); err != nil {
		t.Fatal(err)
	}
	if got, _ := read(rc.conn); !bytes.Equal(got, channelData(0x4001, []byte("late"))) {
		t.Fatalf("client got %x", got)
	}

	// The allocation ends: its channels and its entry go.
	if res := rc.do(t, stun.MethodRefresh, lifetime(0)); res.Type.Class != stun.ClassSuccessResponse {
		t.Fatal(res)
	}
	waitFor(t, "the allocation to end", func() bool { return s.Allocations() == 0 })
	s.relays.fastMu.RLock()
	n := len(s.relays.byClient)
	s.relays.fastMu.RUnlock()
	if n != 0 {
		t.Errorf("%d clients still found after their allocation ended", n)
	}
}

// BenchmarkRelayChannelData relays 1200-byte datagrams over a channel,
// client to peer and back, one at a time: the server's cost per
// datagram (two in, two out) with the round trip's latency.
func BenchmarkRelayChannelData(b *testing.B) {
	s := start(b, nil, nil)
	rc := allocated(b, s)
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer peer.Close()
	pa := peer.LocalAddr().(*net.UDPAddr)
	if res := rc.do(b, stun.MethodChannelBind, channel(0x4001), peerAddr(pa.IP, pa.Port)); res.Type.Class != stun.ClassSuccessResponse {
		b.Fatal(res)
	}
	relayAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(s.onlyRelay(b).port))
	msg := channelData(0x4001, make([]byte, 1200))
	back := make([]byte, 1200)
	buf := make([]byte, 2000)
	b.SetBytes(2 * 1200)
	b.ResetTimer()
	for range b.N {
		if _, err := rc.conn.WriteToUDP(msg, rc.server); err != nil {
			b.Fatal(err)
		}
		if err := peer.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			b.Fatal(err)
		}
		if _, err := peer.Read(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := peer.WriteToUDPAddrPort(back, relayAddr); err != nil {
			b.Fatal(err)
		}
		if err := rc.conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			b.Fatal(err)
		}
		if _, err := rc.conn.Read(buf); err != nil {
			b.Fatal(err)
		}
	}
}
