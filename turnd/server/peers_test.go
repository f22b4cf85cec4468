package server

import (
	"net"
	"net/netip"
	"testing"
)

func TestPeerPolicy(t *testing.T) {
	relay := netip.MustParseAddr("198.51.100.7") // documentation range, and named as own
	p := newPeerPolicy(nil, netip.MustParseAddr("8.8.4.4"), relay)
	for _, c := range []struct {
		ip   string
		want bool
	}{
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"::ffff:8.8.8.8", true},
		{"8.8.4.4", false}, // own (the advertised relay address behind NAT)
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"::ffff:127.0.0.1", false},
		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.0.0.1", false},
		{"100.64.0.1", false},
		{"100.127.255.255", false},
		{"100.128.0.1", true},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"172.32.0.1", true},
		{"192.168.0.1", false},
		{"192.0.0.1", false},
		{"198.18.0.1", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},
		{"::", false},
		{"::1", false},
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"fe80::1", false},
		{"ff02::1", false},
		{"64:ff9b::a00:1", false}, // NAT64 of 10.0.0.1
		{"2002:a00:1::1", false},  // 6to4 of 10.0.0.1
		{"2001:4860:4860::8888", false},
		{"::127.0.0.1", false}, // IPv4-compatible
	} {
		if got := p.allowed(netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("allowed(%s) = %v, want %v", c.ip, got, c.want)
		}
	}
	// Every address of this host is refused, whatever its range.
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && p.allowedIP(n.IP) {
			t.Errorf("own address %s allowed", n.IP)
		}
	}
	if p.allowedIP(nil) {
		t.Error("nil IP allowed")
	}
}

func TestPeerPolicyAllowList(t *testing.T) {
	allow, err := parsePrefixes([]string{"127.0.0.0/8", "10.1.0.0/16", "::ffff:192.168.7.0/120", "fd00::/8", "100.64.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	p := newPeerPolicy(allow)
	for _, c := range []struct {
		ip   string
		want bool
	}{
		{"127.0.0.1", true},
		{"::ffff:127.0.0.1", true},
		{"10.1.2.3", true},
		{"10.2.0.1", false},
		{"192.168.7.9", true},
		{"192.168.8.9", false},
		{"fd00::1", true},
		{"fc00::1", false},
		{"100.64.0.1", true},
		{"100.64.0.2", false},
		{"8.8.8.8", true},
	} {
		if got := p.allowed(netip.MustParseAddr(c.ip)); got != c.want {
			t.Errorf("allowed(%s) = %v, want %v", c.ip, got, c.want)
		}
	}
}

// An address and its IPv4-mapped form are judged alike, and the policy
// never panics.
func FuzzPeerPolicy(f *testing.F) {
	allow, _ := parsePrefixes([]string{"10.1.0.0/16"})
	p := newPeerPolicy(allow, netip.MustParseAddr("203.0.113.9"))
	f.Add([]byte{127, 0, 0, 1})
	f.Add([]byte{8, 8, 8, 8})
	f.Add([]byte{10, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		ip := net.IP(b)
		got := p.allowedIP(ip)
		if len(b) == 4 {
			if mapped := p.allowedIP(ip.To16()); mapped != got {
				t.Fatalf("%v: %v, mapped %v", ip, got, mapped)
			}
		}
	})
}
