package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"time"

	"chatmail.dev/integration/deltachat"
	"github.com/pion/turn/v4"
)

// call shows what a call needs of the server: the TURN server each core
// hands its app's WebRTC (ice_servers, from the credential IMAP METADATA
// gave the account), and a datagram relayed from Alice's relay to Bob's,
// as a call's media would be. Delta Chat's core only signals calls; the
// media is the app's, so the demo relays with a TURN client of its own.
func (d *demo) call() error {
	section("A call's relay")
	if d.s.Env["TURN_PORT"] == "" {
		say("(this server runs no chatmail-turnd)")
		return nil
	}
	want := "turn:" + d.s.Env["TURN_HOST"] + ":" + d.s.Env["TURN_PORT"]
	servers := map[string]deltachat.ICEServer{}
	for _, c := range []*client{d.alice, d.bob} {
		srv, err := d.iceServer(c, want)
		if err != nil {
			return err
		}
		servers[c.name] = srv
		exp, err := strconv.ParseInt(srv.Username, 10, 64)
		if err != nil {
			return fmt.Errorf("%s's TURN username %q is not an expiry time", c.name, srv.Username)
		}
		say("%s's core offers %s, username %s (the credential's expiry, %s), password %s...",
			c.name, want, srv.Username, time.Unix(exp, 0).UTC().Format("2006-01-02 15:04 UTC"), srv.Credential[:6])
	}
	alice, err := d.relay(servers["Alice"])
	if err != nil {
		return fmt.Errorf("the relay of Alice: %w", err)
	}
	defer alice.close()
	bob, err := d.relay(servers["Bob"])
	if err != nil {
		return fmt.Errorf("the relay of Bob: %w", err)
	}
	defer bob.close()
	// Each side lets the other's relay in, as ICE does once it learns the
	// other's candidate.
	if err := alice.client.CreatePermission(bob.conn.LocalAddr()); err != nil {
		return err
	}
	if err := bob.client.CreatePermission(alice.conn.LocalAddr()); err != nil {
		return err
	}
	took, err := relayOne(alice.conn, bob.conn, []byte("a call's first packet"))
	if err != nil {
		return err
	}
	say("A datagram from Alice's relay (%v) reached Bob's relay (%v) through chatmail-turnd in %.1f ms.",
		alice.conn.LocalAddr(), bob.conn.LocalAddr(), float64(took.Microseconds())/1000)
	say("chatmail-turnd took each credential because chatmail-metadata issued it to that account, which is not blocked (turn_credentials).")
	return nil
}

// iceServer waits for c's core to offer the server's TURN server: core
// asks METADATA after its inbox loop's first login.
func (d *demo) iceServer(c *client, want string) (deltachat.ICEServer, error) {
	ctx, cancel := d.waitCtx()
	defer cancel()
	var last []deltachat.ICEServer
	for {
		servers, err := c.Acc.ICEServers(ctx)
		if err != nil {
			return deltachat.ICEServer{}, err
		}
		if len(servers) == 1 && slices.Equal(servers[0].URLs, []string{want}) {
			return servers[0], nil
		}
		last = servers
		select {
		case <-ctx.Done():
			return deltachat.ICEServer{}, fmt.Errorf("%s's core offers %+v, want %s", c.name, last, want)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type relay struct {
	client *turn.Client
	conn   net.PacketConn // the relayed address
	local  net.PacketConn
}

func (r *relay) close() {
	r.conn.Close()
	r.client.Close()
	r.local.Close()
}

// relay allocates a relay with a credential, over UDP as Delta Chat does.
func (d *demo) relay(srv deltachat.ICEServer) (*relay, error) {
	local, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(d.s.Env["TURN_HOST"], d.s.Env["TURN_PORT"])
	c, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr: addr, TURNServerAddr: addr, Conn: local,
		Username: srv.Username, Password: srv.Credential, Realm: d.s.Domain,
	})
	if err != nil {
		local.Close()
		return nil, err
	}
	if err := c.Listen(); err != nil {
		c.Close()
		local.Close()
		return nil, err
	}
	conn, err := c.Allocate()
	if err != nil {
		c.Close()
		local.Close()
		return nil, err
	}
	return &relay{client: c, conn: conn, local: local}, nil
}

// relayOne sends msg from one relay to the other until it arrives (the
// first datagrams may race the permissions) and returns how long it took.
func relayOne(from, to net.PacketConn, msg []byte) (time.Duration, error) {
	start := time.Now()
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			if err := to.SetReadDeadline(start.Add(wait)); err != nil {
				got <- err
				return
			}
			n, _, err := to.ReadFrom(buf)
			if err != nil {
				got <- err
				return
			}
			if bytes.Equal(buf[:n], msg) {
				got <- nil
				return
			}
		}
	}()
	for {
		if _, err := from.WriteTo(msg, to.LocalAddr()); err != nil {
			return 0, err
		}
		select {
		case err := <-got:
			if err != nil {
				return 0, errors.New("the relayed datagram did not arrive: " + err.Error())
			}
			return time.Since(start), nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}
