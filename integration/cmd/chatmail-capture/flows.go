package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"chatmail.dev/integration/chatflow"
	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// quiet is how long no new message must arrive before a step counts as
// finished: cores send sync messages and the like shortly after.
const quiet = 2 * time.Second

type env struct {
	ctx  context.Context
	s    *stack.Stack
	px   *proxy
	out  string
	rpcs map[string]*deltachat.RPC
	// peers are all profiles so far: a step may capture messages of
	// others than those it involves, such as sync messages.
	peers []*peer
}

// peer is a profile and the core version it runs on.
type peer struct {
	*chatflow.Profile
	version string
}

func (e *env) newPeer(version, name string) (*peer, error) {
	p, err := chatflow.NewProfileVia(e.ctx, e.rpcs[version], e.s, name, e.px.port())
	if err != nil {
		return nil, err
	}
	pe := &peer{p, version}
	e.peers = append(e.peers, pe)
	return pe, nil
}

func (e *env) wait() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.ctx, 90*time.Second)
}

// step runs f, waits until at least min messages have been captured since
// it started and then until quiet, and returns those messages.
func (e *env) step(name string, min int, f func(ctx context.Context) error) ([]captured, error) {
	start := e.px.count()
	ctx, cancel := e.wait()
	defer cancel()
	if err := f(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	for {
		ch := e.px.changed()
		n := e.px.count() - start
		timer := time.NewTimer(quiet)
		select {
		case <-ch:
			timer.Stop()
			continue
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil, fmt.Errorf("%s: %d of %d messages captured: %w", name, n, min, ctx.Err())
		}
		if n >= min {
			return e.px.since(start), nil
		}
	}
}

// rule names, in order, the messages that from sent to (at least) to.
type rule struct {
	from, to *peer
	names    []string
}

// assign saves the messages of a step: those matched by a rule under the
// rule's names, the rest (such as sync messages to the sender's own
// address) as <step>-<sender role>-<n>. A rule left with names unused is
// an error: the client did not send what the step expects.
func (e *env) assign(step string, msgs []captured, peers []*peer, rules ...rule) error {
	used := map[int]bool{}
	for _, r := range rules {
		k := 0
		for i, m := range msgs {
			if used[i] || k == len(r.names) || m.User != r.from.Addr || !slices.Contains(m.Rcpts, r.to.Addr) {
				continue
			}
			used[i] = true
			if err := e.save(r.from.version, r.names[k], m); err != nil {
				return err
			}
			k++
		}
		if k < len(r.names) {
			return fmt.Errorf("%s: %s sent %d messages to %s, want %d (%v)", step, r.from.DisplayName, k, r.to.DisplayName, len(r.names), r.names)
		}
	}
	extra := map[string]int{}
	for i, m := range msgs {
		if used[i] {
			continue
		}
		from := (*peer)(nil)
		for _, p := range e.peers {
			if p.Addr == m.User {
				from = p
			}
		}
		if from == nil {
			return fmt.Errorf("%s: message from unknown %s", step, m.User)
		}
		kind := "to-others"
		if len(m.Rcpts) == 1 && m.Rcpts[0] == m.User {
			kind = "self"
		}
		role := strings.ToLower(strings.Fields(from.DisplayName)[0])
		key := fmt.Sprintf("%s-%s-%s", step, role, kind)
		extra[key]++
		if err := e.save(from.version, fmt.Sprintf("%s-%d", key, extra[key]), m); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) save(version, shape string, m captured) error {
	dir := filepath.Join(e.out, "dc-"+version)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, shape+".eml")
	log.Printf("  %s (%d bytes, %s -> %v)", path, len(m.Data), m.User, m.Rcpts)
	return os.WriteFile(path, m.Data, 0o644)
}

// join has joiner scan inviter's invitation to a one-to-one chat (group
// 0) or to group, and saves the handshake under the names given.
func (e *env) join(step string, inviter, joiner *peer, group uint32, joinerNames, inviterNames []string, others ...*peer) (chatflow.Joined, error) {
	var j chatflow.Joined
	msgs, err := e.step(step, len(joinerNames)+len(inviterNames), func(ctx context.Context) error {
		qr, err := inviter.Acc.SecureJoinQR(ctx, group)
		if err != nil {
			return err
		}
		log.Printf("  %s invitation: %s", inviter.version, qr)
		j, err = chatflow.JoinByQR(ctx, inviter.Profile, joiner.Profile, qr)
		return err
	})
	if err != nil {
		return j, err
	}
	return j, e.assign(step, msgs, append([]*peer{inviter, joiner}, others...),
		rule{joiner, inviter, joinerNames}, rule{inviter, joiner, inviterNames})
}

// isV3 tells whether version sends Secure-Join v3 (core 2.45 and later).
func isV3(version string) bool {
	var major, minor int
	fmt.Sscanf(version, "%d.%d", &major, &minor)
	return major > 2 || major == 2 && minor >= 45
}

// handshake returns the names of the joiner's and the inviter's messages
// of a SecureJoin, by protocol.
func handshake(version string, group bool, prefix string) (joiner, inviter []string) {
	n := func(s ...string) []string {
		for i := range s {
			s[i] = prefix + s[i]
		}
		return s
	}
	switch {
	case isV3(version) && group:
		return n("securejoin-group-vc-request-pubkey", "securejoin-vg-request-with-auth"), n("securejoin-group-vc-pubkey", "securejoin-vg-member-added")
	case isV3(version):
		return n("securejoin-vc-request-pubkey", "securejoin-vc-request-with-auth"), n("securejoin-vc-pubkey", "securejoin-vc-contact-confirm")
	case group:
		return n("securejoin-vg-request", "securejoin-vg-request-with-auth"), n("securejoin-vg-auth-required", "securejoin-vg-member-added")
	default:
		return n("securejoin-vc-request", "securejoin-vc-request-with-auth"), n("securejoin-vc-auth-required", "securejoin-vc-contact-confirm")
	}
}

// sendAndReceive sends data from one peer to a chat and waits until each
// of to has it; it saves the message from sent to to[0] as shape.
func (e *env) sendAndReceive(shape string, from *peer, chatID uint32, data deltachat.MessageData, peers []*peer, to ...*peer) (*deltachat.Message, error) {
	var got *deltachat.Message
	msgs, err := e.step(shape, 1, func(ctx context.Context) error {
		if _, err := chatflow.Send(ctx, from.Profile, chatID, data); err != nil {
			return err
		}
		for _, p := range to {
			msg, err := p.Receive(ctx)
			if err != nil {
				return fmt.Errorf("%s receiving: %w", p.DisplayName, err)
			}
			if got == nil {
				got = msg
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return got, e.assign(shape, msgs, peers, rule{from, to[0], []string{shape}})
}

// sendOnly runs an action of from that sends one message to to, and saves it.
func (e *env) sendOnly(shape string, from, to *peer, peers []*peer, f func(ctx context.Context) error) error {
	return e.sendNamed(shape, from, to, peers, []string{shape}, f)
}

// sendNamed runs an action of from that sends len(names) messages to to,
// and saves them under names, in order.
func (e *env) sendNamed(step string, from, to *peer, peers []*peer, names []string, f func(ctx context.Context) error) error {
	msgs, err := e.step(step, len(names), f)
	if err != nil {
		return err
	}
	return e.assign(step, msgs, peers, rule{from, to, names})
}

func secret(what string) string { return fmt.Sprintf("%s, secret %s!", what, rand.Text()[:8]) }

// captureCurrent captures every shape of the current core.
func (e *env) captureCurrent() error {
	v := current
	alice, err := e.newPeer(v, "Alice Liddell")
	if err != nil {
		return err
	}
	bob, err := e.newPeer(v, "Bob Dylan")
	if err != nil {
		return err
	}
	carol, err := e.newPeer(v, "Carol King")
	if err != nil {
		return err
	}
	all := []*peer{alice, bob, carol}

	jn, in := handshake(v, false, "")
	joined, err := e.join("securejoin", alice, bob, 0, jn, in)
	if err != nil {
		return err
	}
	bobChat := joined.JoinerChat
	aliceChat, err := alice.Acc.CreateChatByContactID(e.ctx, joined.JoinerContact)
	if err != nil {
		return err
	}

	textMsg, err := e.sendAndReceive("text", bob, bobChat, deltachat.MessageData{Text: secret("hello Alice")}, all, alice)
	if err != nil {
		return err
	}
	textID, err := lastOwnMessage(e.ctx, bob, bobChat)
	if err != nil {
		return err
	}
	if _, err := e.sendAndReceive("text-reply", alice, aliceChat, deltachat.MessageData{Text: secret("hi Bob")}, all, bob); err != nil {
		return err
	}

	dir, err := os.MkdirTemp("", "dcfiles")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	img := filepath.Join(dir, "picture.png")
	if err := writePNG(img); err != nil {
		return err
	}
	if _, err := e.sendAndReceive("image", alice, aliceChat, deltachat.MessageData{Text: "a picture", File: img, ViewType: "Image"}, all, bob); err != nil {
		return err
	}
	small := filepath.Join(dir, "notes.bin")
	if err := writeRandom(small, 20<<10); err != nil {
		return err
	}
	if _, err := e.sendAndReceive("file", alice, aliceChat, deltachat.MessageData{Text: "the notes", File: small, FileName: "notes.bin", ViewType: "File"}, all, bob); err != nil {
		return err
	}
	// Large enough to be sent as a pre-message and a post-message.
	large := filepath.Join(dir, "holiday.bin")
	if err := writeRandom(large, 600<<10); err != nil {
		return err
	}
	// Core sends the small pre-message (shown at once) first.
	if err := e.sendNamed("file-large", alice, bob, all, []string{"file-large-pre-message", "file-large-post-message"}, func(ctx context.Context) error {
		_, err := chatflow.Send(ctx, alice.Profile, aliceChat, deltachat.MessageData{Text: "the big file", File: large, FileName: "holiday.bin", ViewType: "File"})
		if err != nil {
			return err
		}
		_, err = bob.Receive(ctx)
		return err
	}); err != nil {
		return err
	}

	if err := e.sendOnly("reaction", alice, bob, all, func(ctx context.Context) error {
		_, err := alice.Acc.SendReaction(ctx, textMsg.ID, "👍")
		return err
	}); err != nil {
		return err
	}
	if err := e.sendOnly("edit", bob, alice, all, func(ctx context.Context) error {
		return bob.Acc.SendEditRequest(ctx, textID, secret("hello Alice, edited"))
	}); err != nil {
		return err
	}
	if err := e.sendOnly("delete", bob, alice, all, func(ctx context.Context) error {
		return bob.Acc.DeleteMessagesForAll(ctx, []uint32{textID})
	}); err != nil {
		return err
	}

	// Groups: created with Bob, Carol joins by QR, Bob leaves and comes back.
	group, err := e.captureGroup(v, alice, bob, carol, joined, all)
	if err != nil {
		return err
	}
	if err := e.sendOnly("group-member-remove", alice, bob, all, func(ctx context.Context) error {
		return alice.Acc.RemoveContactFromChat(ctx, group, joined.JoinerContact)
	}); err != nil {
		return err
	}
	if err := e.sendOnly("group-member-add", alice, bob, all, func(ctx context.Context) error {
		return alice.Acc.AddContactToChat(ctx, group, joined.JoinerContact)
	}); err != nil {
		return err
	}

	// Multi-device: a message to oneself and a sync message.
	self, err := alice.Acc.SelfChat(e.ctx)
	if err != nil {
		return err
	}
	if err := e.sendOnly("self-text", alice, alice, all, func(ctx context.Context) error {
		_, err := chatflow.Send(ctx, alice.Profile, self, deltachat.MessageData{Text: secret("note to self")})
		return err
	}); err != nil {
		return err
	}
	if err := e.sendOnly("sync", alice, alice, all, func(ctx context.Context) error {
		return alice.Acc.SetChatVisibility(ctx, aliceChat, "Pinned")
	}); err != nil {
		return err
	}

	// A broadcast channel that Bob subscribes to by QR.
	channel, err := alice.Acc.CreateBroadcast(e.ctx, "Alice's News")
	if err != nil {
		return err
	}
	msgs, err := e.step("securejoin-channel", 2, func(ctx context.Context) error {
		qr, err := alice.Acc.SecureJoinQR(ctx, channel)
		if err != nil {
			return err
		}
		log.Printf("  channel invitation: %s", qr)
		_, err = chatflow.JoinByQR(ctx, alice.Profile, bob.Profile, qr)
		return err
	})
	if err != nil {
		return err
	}
	// Bob has Alice's key already, so the handshake may be short: name
	// the messages by sender and order.
	if err := e.assign("securejoin-channel", msgs, all); err != nil {
		return err
	}
	if _, err := e.sendAndReceive("broadcast", alice, channel, deltachat.MessageData{Text: secret("news")}, all, bob); err != nil {
		return err
	}

	// A call offer; the SDP is what a UI would pass.
	return e.sendOnly("call", alice, bob, all, func(ctx context.Context) error {
		_, err := alice.Acc.PlaceOutgoingCall(ctx, aliceChat, "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", false)
		return err
	})
}

// lastOwnMessage returns the newest message p sent in a chat.
// captureGroup captures a group's creation with Bob, Carol's join by QR and
// a message to all three; it returns the group.
func (e *env) captureGroup(v string, alice, bob, carol *peer, joined chatflow.Joined, all []*peer) (uint32, error) {
	group, err := alice.Acc.CreateGroupChat(e.ctx, "Tea Party")
	if err != nil {
		return 0, err
	}
	if err := alice.Acc.AddContactToChat(e.ctx, group, joined.JoinerContact); err != nil {
		return 0, err
	}
	if _, err := e.sendAndReceive("group-create", alice, group, deltachat.MessageData{Text: secret("welcome")}, all, bob); err != nil {
		return 0, err
	}
	jn, in := handshake(v, true, "")
	if _, err := e.join("securejoin-group", alice, carol, group, jn, in, bob); err != nil {
		return 0, err
	}
	_, err = e.sendAndReceive("group-text", alice, group, deltachat.MessageData{Text: secret("tea is ready")}, all, bob, carol)
	return group, err
}

func lastOwnMessage(ctx context.Context, p *peer, chatID uint32) (uint32, error) {
	ids, err := p.Acc.MessageIDs(ctx, chatID)
	if err != nil {
		return 0, err
	}
	for _, id := range slices.Backward(ids) {
		m, err := p.Acc.Message(ctx, id)
		if err != nil {
			return 0, err
		}
		if m.FromID == deltachat.ContactSelf && !m.IsInfo {
			return id, nil
		}
	}
	return 0, fmt.Errorf("%s sent nothing in chat %d", p.DisplayName, chatID)
}

// captureOld captures, between two clients of an old version, the
// Secure-Join handshakes, a text and a group message.
func (e *env) captureOld(v string) error {
	alice, err := e.newPeer(v, "Alice Liddell")
	if err != nil {
		return err
	}
	bob, err := e.newPeer(v, "Bob Dylan")
	if err != nil {
		return err
	}
	carol, err := e.newPeer(v, "Carol King")
	if err != nil {
		return err
	}
	all := []*peer{alice, bob, carol}
	jn, in := handshake(v, false, "")
	joined, err := e.join("securejoin", alice, bob, 0, jn, in)
	if err != nil {
		return err
	}
	aliceChat, err := alice.Acc.CreateChatByContactID(e.ctx, joined.JoinerContact)
	if err != nil {
		return err
	}
	if _, err := e.sendAndReceive("text", bob, joined.JoinerChat, deltachat.MessageData{Text: secret("hello Alice")}, all, alice); err != nil {
		return err
	}
	if _, err := e.sendAndReceive("text-reply", alice, aliceChat, deltachat.MessageData{Text: secret("hi Bob")}, all, bob); err != nil {
		return err
	}
	_, err = e.captureGroup(v, alice, bob, carol, joined, all)
	return err
}

// captureCross has fresh current clients join an old client's one-to-one
// and group invitations, which have no v=3: the current core then speaks
// the legacy protocol. The current client's messages go under its own
// version as securejoin-legacy-*.
func (e *env) captureCross(old string) error {
	alice, err := e.newPeer(old, "Alice Liddell")
	if err != nil {
		return err
	}
	dave, err := e.newPeer(current, "Dave Brubeck")
	if err != nil {
		return err
	}
	erin, err := e.newPeer(current, "Erin Moran")
	if err != nil {
		return err
	}
	jn, in := handshake(old, false, "")
	jn = legacyNames(jn)
	in = prefixed(in, "from-"+current+"-")
	if _, err := e.join("securejoin-legacy", alice, dave, 0, jn, in, erin); err != nil {
		return err
	}
	group, err := alice.Acc.CreateGroupChat(e.ctx, "Jazz Club")
	if err != nil {
		return err
	}
	jn, in = handshake(old, true, "")
	jn = legacyNames(jn)
	in = prefixed(in, "from-"+current+"-")
	_, err = e.join("securejoin-legacy-group", alice, erin, group, jn, in, dave)
	return err
}

func legacyNames(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = strings.Replace(n, "securejoin-", "securejoin-legacy-", 1)
	}
	return out
}

func prefixed(names []string, prefix string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = prefix + n
	}
	return out
}

func writePNG(path string) error {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for x := range 64 {
		for y := range 48 {
			img.Set(x, y, color.RGBA{uint8(x * 4), uint8(y * 5), 128, 255})
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o600)
}

func writeRandom(path string, n int) error {
	b := make([]byte, n)
	rand.Read(b)
	return os.WriteFile(path, b, 0o600)
}
