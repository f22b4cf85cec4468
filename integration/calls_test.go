package integration

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"chatmail.dev/integration/deltachat"
)

// A real Delta Chat client finds the stack's TURN server for its calls:
// core reads /shared/vendor/deltachat/turn after login, and its
// ice_servers call (what the apps hand to WebRTC) returns exactly our
// server, resolved, with the credential chatmail-metadata issued to the
// account; a TURN client allocates a relay with exactly those.
func TestDeltaChatICEServers(t *testing.T) {
	s := shared
	requireTurnd(t, s)
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, s, "Alice Liddell")
	wantURL := fmt.Sprintf("turn:%s:%s", s.Env["TURN_HOST"], s.Env["TURN_PORT"])

	// Core asks after its inbox loop's first login, a moment after IO
	// starts; until then it offers its public fallback servers (which do
	// not resolve here).
	var servers []deltachat.ICEServer
	eventually(t, chatWait, func() error {
		var err error
		servers, err = alice.Acc.ICEServers(waitCtx(t))
		if err != nil {
			return err
		}
		if len(servers) != 1 || !slices.Equal(servers[0].URLs, []string{wantURL}) {
			return fmt.Errorf("ice_servers = %+v, want one server %s", servers, wantURL)
		}
		return nil
	})
	got := servers[0]

	// The very credential METADATA hands this account (the second ask
	// within the lifetime gets the same one).
	c := imapSession(t, s, alice.Addr, alice.Password)
	cred, err := parseTurnValue(getMetadata(t, c, "", metaTurn)[metaTurn])
	if err != nil {
		t.Fatal(err)
	}
	if got.Username != cred.Username || got.Credential != cred.Password {
		t.Errorf("core's ICE server has %s/%s, METADATA gives the account %s/%s", got.Username, got.Credential, cred.Username, cred.Password)
	}
	if exp := cred.expiry(t); time.Until(exp) < 12*time.Hour {
		t.Errorf("the credential expires at %v: core asks again on every IDLE cycle within 12 hours of it", exp)
	}

	relay, err := allocate(t, s, "udp", turnCred{Username: got.Username, Password: got.Credential})
	if err != nil {
		t.Fatalf("Allocate with core's ICE server credential: %v", err)
	}
	peer := udpPeer(t)
	exchange(t, relay, peer, peer.LocalAddr(), relay.LocalAddr(), "a call's first packet")
}
