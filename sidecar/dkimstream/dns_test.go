package dkimstream

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// dnsServer answers TXT queries over UDP from records; names in silent
// get no answer at all, names in neither get NXDOMAIN.
type dnsServer struct {
	conn    net.PacketConn
	records map[string]string
	silent  map[string]bool
}

func startDNS(t *testing.T, records map[string]string, silent ...string) *net.Resolver {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{conn: c, records: records, silent: map[string]bool{}}
	for _, n := range silent {
		s.silent[n] = true
	}
	go s.serve()
	t.Cleanup(func() { c.Close() })
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", c.LocalAddr().String())
	}}
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp := s.answer(buf[:n]); resp != nil {
			_, _ = s.conn.WriteTo(resp, from)
		}
	}
}

// answer builds the response to one query (RFC 1035 4.1), or nil.
func (s *dnsServer) answer(q []byte) []byte {
	if len(q) < 12 {
		return nil
	}
	// The question: labels, then type and class.
	var labels []string
	i := 12
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if i+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	end := i + 5 // the root label, type, class
	if end > len(q) {
		return nil
	}
	name := strings.ToLower(strings.Join(labels, "."))
	if s.silent[name] {
		return nil
	}
	txt, found := s.records[name]
	flags := uint16(0x8180) // response, recursion desired and available
	if !found {
		flags |= 3 // NXDOMAIN
	}
	resp := make([]byte, 12, 512)
	copy(resp, q[:2]) // ID
	binary.BigEndian.PutUint16(resp[2:], flags)
	binary.BigEndian.PutUint16(resp[4:], 1) // one question
	if found {
		binary.BigEndian.PutUint16(resp[6:], 1) // one answer
	}
	resp = append(resp, q[12:end]...)
	if found {
		var rdata []byte
		for len(txt) > 0 { // character-strings of at most 255 bytes
			n := min(len(txt), 255)
			rdata = append(append(rdata, byte(n)), txt[:n]...)
			txt = txt[n:]
		}
		resp = append(resp, 0xc0, 12)                  // the name, as a pointer to the question
		resp = binary.BigEndian.AppendUint16(resp, 16) // TXT
		resp = binary.BigEndian.AppendUint16(resp, 1)  // IN
		resp = binary.BigEndian.AppendUint32(resp, 60)
		resp = binary.BigEndian.AppendUint16(resp, uint16(len(rdata)))
		resp = append(resp, rdata...)
	}
	return resp
}

// TestDNS checks key lookups through a real resolver against a local DNS
// server: found (a record longer than one TXT string), not found
// (permanent) and no answer (temporary), each through a verification.
func TestDNS(t *testing.T) {
	msg, keys := signed(t, 4<<10)
	name := "sel._domainkey.chat.example"
	record := keys[name] + "; n=" + strings.Repeat("x", 300) // spans two strings
	r := startDNS(t, map[string]string{name: record}, "sel._domainkey.slow.example")
	lookup := DNS{Resolver: r, Timeout: 200 * time.Millisecond}

	txt, err := lookup.LookupTXT(context.Background(), name)
	if err != nil || len(txt) != 1 || txt[0] != record {
		t.Fatalf("found: %q %v", txt, err)
	}
	v := Verify(lookup)
	feed(t, v, msg)
	if got, err := v.Result(context.Background(), "chat.example"); err != nil || got != Pass {
		t.Errorf("verified through DNS: %v %v", got, err)
	}

	_, err = lookup.LookupTXT(context.Background(), "sel._domainkey.other.example")
	var de *net.DNSError
	if !errors.As(err, &de) || !de.IsNotFound || de.Temporary() {
		t.Errorf("not found: %v", err)
	}

	start := time.Now()
	_, err = lookup.LookupTXT(context.Background(), "sel._domainkey.slow.example")
	if !errors.As(err, &de) || !de.Temporary() {
		t.Errorf("no answer: %v, want a temporary error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("no answer took %v with a 200 ms timeout", d)
	}
	// Signed by a domain whose DNS does not answer: try again later.
	slow := strings.Replace(string(msg), "d=chat.example", "d=slow.example", 1)
	v = Verify(lookup)
	feed(t, v, []byte(slow))
	if got, _ := v.Result(context.Background(), "slow.example"); got != TempFail {
		t.Errorf("signer's DNS silent: %v, want tempfail", got)
	}
}
