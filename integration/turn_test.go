package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pion/turn/v4"

	"chatmail.dev/integration/stack"
)

// chatmail-turnd, driven by a pion TURN client (the library turnd is built
// on, as a client) with credentials chatmail-metadata issued through
// Dovecot: the stack's turnd listens on 127.0.0.1:TURN_PORT (UDP and TCP)
// and relays to 127.0.0.0/24 only (TURN_ALLOW_PEERS; loopback is forbidden
// by default).

// requireTurnd fails t unless the stack runs chatmail-turnd.
func requireTurnd(t *testing.T, s *stack.Stack) {
	t.Helper()
	requireMetadata(t, s) // the credentials come from it
	if s.Env["TURND_METRICS"] == "" {
		t.Fatal("the stack runs no chatmail-turnd (no TURND_METRICS in stack.env: was it built?)")
	}
}

// turnWait bounds one exchange with the TURN server or a peer.
const turnWait = 10 * time.Second

// turnClient connects a TURN client to the stack's turnd over network
// ("udp" or "tcp") with a credential and closes it when t ends.
func turnClient(t *testing.T, s *stack.Stack, network string, cred turnCred) *turn.Client {
	t.Helper()
	server := s.Addr("TURN_PORT")
	var conn net.PacketConn
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = c
	case "tcp":
		c, err := net.DialTimeout("tcp", server, turnWait)
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(c)
	default:
		t.Fatalf("network %q", network)
	}
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: server,
		TURNServerAddr: server,
		Conn:           conn,
		Username:       cred.Username,
		Password:       cred.Password,
		Realm:          s.Domain,
		Software:       "chatmail integration test",
	})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		conn.Close()
	})
	if err := c.Listen(); err != nil {
		t.Fatal(err)
	}
	return c
}

// allocate asks for a relay with a credential and returns it, or the
// server's refusal.
func allocate(t *testing.T, s *stack.Stack, network string, cred turnCred) (net.PacketConn, error) {
	t.Helper()
	relay, err := turnClient(t, s, network, cred).Allocate()
	if err == nil {
		t.Cleanup(func() { relay.Close() })
	}
	return relay, err
}

// wantRefused checks that err is the server's refusal (an error response),
// not a timeout or a closed connection. (turnd answers a bad password or
// an expired credential 400, like pion's own handlers, and a credential it
// did not issue or of a blocked account 486; a forbidden peer 403.)
func wantRefused(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: accepted, want refused", what)
		return
	}
	if !strings.Contains(err.Error(), "error response") {
		t.Errorf("%s: %v, want an error response", what, err)
	}
}

// udpPeer is a plain UDP socket on 127.0.0.1, a peer of a relay.
func udpPeer(t *testing.T) net.PacketConn {
	t.Helper()
	p, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// exchange sends msg from one socket to another until it arrives (UDP,
// and the first datagrams race the permission's creation) and checks that
// it came from wantFrom.
func exchange(t *testing.T, from, to net.PacketConn, toAddr, wantFrom net.Addr, msg string) {
	t.Helper()
	deadline := time.Now().Add(turnWait)
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			if err := to.SetReadDeadline(deadline); err != nil {
				got <- err
				return
			}
			n, src, err := to.ReadFrom(buf)
			if err != nil {
				got <- err
				return
			}
			if !bytes.Equal(buf[:n], []byte(msg)) {
				continue // an earlier message, sent again
			}
			if src.String() != wantFrom.String() {
				got <- errors.New("from " + src.String() + ", want " + wantFrom.String())
				return
			}
			got <- nil
			return
		}
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := from.WriteTo([]byte(msg), toAddr); err != nil {
			t.Fatalf("sending %q to %v: %v", msg, toAddr, err)
		}
		select {
		case err := <-got:
			if err != nil {
				t.Fatalf("receiving %q: %v", msg, err)
			}
			return
		case <-tick.C:
		}
	}
}

// A TURN client allocates a relay, over UDP and over TCP, with the
// credential METADATA handed its account, and the relay carries datagrams
// both ways between it and a loopback peer; two clients relay to each
// other through their two relays.
func TestTurnRelay(t *testing.T) {
	s := shared
	requireTurnd(t, s)
	_, cred := loginTurn(t, s)
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			relay, err := allocate(t, s, network, cred)
			if err != nil {
				t.Fatalf("Allocate over %s: %v", network, err)
			}
			if ip := relay.LocalAddr().(*net.UDPAddr).IP; !ip.Equal(net.IPv4(127, 0, 0, 1)) {
				t.Errorf("relayed address %v, want on 127.0.0.1 (relay_bind)", relay.LocalAddr())
			}
			peer := udpPeer(t)
			exchange(t, relay, peer, peer.LocalAddr(), relay.LocalAddr(), "to the peer via "+network)
			exchange(t, peer, relay, relay.LocalAddr(), peer.LocalAddr(), "back from the peer via "+network)
		})
	}

	// Alice and Bob, each through a relay of their own.
	_, bobCred := loginTurn(t, s)
	alice, err := allocate(t, s, "udp", cred)
	if err != nil {
		t.Fatal(err)
	}
	bobClient := turnClient(t, s, "udp", bobCred)
	bob, err := bobClient.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer bob.Close()
	// Bob lets Alice's relay in before she sends (a permission, as ICE
	// does when it learns the other side's candidate).
	if err := bobClient.CreatePermission(alice.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	exchange(t, alice, bob, bob.LocalAddr(), alice.LocalAddr(), "relay to relay")
	exchange(t, bob, alice, alice.LocalAddr(), bob.LocalAddr(), "and back")
}

// turnd refuses credentials it did not issue or no longer honours: a
// wrong password (forged), a username signed with the right secret that
// metadata-proxy never issued, an expired credential, and the credential
// of a blocked account; each beside one it accepts.
func TestTurnRefusesCredentials(t *testing.T) {
	s := shared
	requireTurnd(t, s)
	addr, cred := loginTurn(t, s)
	if _, err := allocate(t, s, "udp", cred); err != nil {
		t.Fatalf("Allocate with the issued credential: %v", err)
	}
	secret := turnSecret(t, s)

	forged := cred
	forged.Password = turnPassword([]byte("not the secret"), cred.Username)
	_, err := allocate(t, s, "udp", forged)
	wantRefused(t, "a wrong password", err)

	// A second the store has not recorded for anyone: the HMAC alone
	// does not do, so a leaked secret alone mints nothing.
	// (Issued credentials expire about lifetime, 120 h, from now.)
	unissued := cred
	unissued.Username = strconv.FormatInt(time.Now().Add(50*time.Hour).Unix(), 10)
	if who := owner(t, s, unissued.Username); who != "" {
		t.Fatalf("username %s was issued to %s", unissued.Username, who)
	}
	unissued.Password = turnPassword(secret, unissued.Username)
	_, err = allocate(t, s, "udp", unissued)
	wantRefused(t, "a signed but never issued username", err)

	// Lifetimes are 48 hours at least, so an expired credential is
	// recorded by hand: the account's, expired a minute ago.
	expired := cred
	exp := time.Now().Add(-time.Minute).Unix()
	if _, err := db(t, s).Exec(context.Background(), `INSERT INTO turn_credentials (expiry, address) VALUES ($1, $2)`, exp, addr); err != nil {
		t.Fatal(err)
	}
	expired.Username = strconv.FormatInt(exp, 10)
	expired.Password = turnPassword(secret, expired.Username)
	_, err = allocate(t, s, "udp", expired)
	wantRefused(t, "an expired credential", err)

	// Blocked: the credential worked a moment ago.
	blocked, blockedCred := loginTurn(t, s)
	if _, err := allocate(t, s, "tcp", blockedCred); err != nil {
		t.Fatalf("Allocate before the block: %v", err)
	}
	s.Admin(t, "block", blocked)
	for _, network := range []string{"udp", "tcp"} {
		_, err = allocate(t, s, network, blockedCred)
		wantRefused(t, "a blocked account's credential over "+network, err)
	}
	// The others still work.
	if _, err := allocate(t, s, "udp", cred); err != nil {
		t.Errorf("Allocate with a good credential after the refusals: %v", err)
	}
}

// owner returns the account a TURN username was issued to, or "".
func owner(t *testing.T, s *stack.Stack, username string) string {
	t.Helper()
	var addr string
	err := db(t, s).QueryRow(context.Background(), `SELECT address FROM turn_credentials WHERE expiry = $1::bigint`, username).Scan(&addr)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	return addr
}

// A relay reaches only the peers turnd allows: the stack allows
// 127.0.0.0/24, so 127.0.1.1 (loopback too, but outside it) and private
// addresses are refused a permission, and nothing sent there arrives.
func TestTurnRefusesForbiddenPeers(t *testing.T) {
	s := shared
	requireTurnd(t, s)
	_, cred := loginTurn(t, s)
	c := turnClient(t, s, "udp", cred)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	allowed := udpPeer(t)
	if err := c.CreatePermission(allowed.LocalAddr()); err != nil {
		t.Errorf("permission for %v (allowed): %v", allowed.LocalAddr(), err)
	}
	forbidden, err := net.ListenPacket("udp4", "127.0.1.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer forbidden.Close()
	for _, peer := range []net.Addr{forbidden.LocalAddr(), &net.UDPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 9}, &net.UDPAddr{IP: net.IPv4(192, 168, 1, 1), Port: 9}} {
		wantRefused(t, "a permission for "+peer.String(), c.CreatePermission(peer))
	}
	// Nothing reaches the forbidden peer, however often it is sent.
	for range 5 {
		relay.WriteTo([]byte("let me in"), forbidden.LocalAddr()) //nolint:errcheck // refused, as checked above
	}
	forbidden.SetReadDeadline(time.Now().Add(time.Second))
	if n, src, err := forbidden.ReadFrom(make([]byte, 100)); err == nil {
		t.Errorf("the forbidden peer received %d bytes from %v", n, src)
	}
}

// Blocking an account ends its live allocation too, not only new ones:
// chatmail-admin block commits, PostgreSQL notifies turnd, and turnd
// closes the relay, so a call in progress stops relaying at once (pion
// itself would keep it until its lifetime ran out).
func TestTurnBlockEndsLiveAllocation(t *testing.T) {
	s := shared
	requireTurnd(t, s)
	addr, cred := loginTurn(t, s)
	c := turnClient(t, s, "udp", cred)
	relay, err := c.Allocate()
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	peer := udpPeer(t)
	if err := c.CreatePermission(peer.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	exchange(t, relay, peer, peer.LocalAddr(), relay.LocalAddr(), "before the block")
	revoked := `chatmail_turnd_allocations_revoked_total{reason="unusable"}`
	before := scrapeMetrics(t, s.Env["TURND_METRICS"], "chatmail_turnd_")[revoked]

	s.Admin(t, "block", addr)
	eventually(t, 10*time.Second, func() error {
		if n := scrapeMetrics(t, s.Env["TURND_METRICS"], "chatmail_turnd_")[revoked]; n <= before {
			return fmt.Errorf("%s = %v after the block, want more than %v", revoked, n, before)
		}
		return nil
	})
	// Nothing passes the ended relay: what the client sends reaches no
	// one, and the peer's datagrams go nowhere.
	buf := make([]byte, 1500)
	for i := range 5 {
		msg := fmt.Sprintf("after the block %d", i)
		_, _ = relay.WriteTo([]byte(msg), peer.LocalAddr()) // may fail: the allocation is gone
		if err := peer.SetReadDeadline(time.Now().Add(300 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		// (Copies of the message before, sent again until one arrived,
		// may still come in.)
		if n, _, err := peer.ReadFrom(buf); err == nil && strings.HasPrefix(string(buf[:n]), "after") {
			t.Fatalf("the peer got %q through a blocked account's relay", buf[:n])
		}
	}
}
