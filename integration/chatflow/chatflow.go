// Package chatflow is what a Delta Chat user does on a chatmail server,
// driven through real Delta Chat clients (package deltachat) against a
// stack (package stack): create a profile whose first login creates the
// account, meet by SecureJoin, send and receive. The integration tests and
// cmd/chatmail-demo share it.
//
// Every function takes a context that bounds its waits and returns an
// error rather than failing a test; what to assert is left to the caller.
package chatflow

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"strconv"
	"time"

	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// Port returns the port of s under an env key such as "IMAPS_PORT".
func Port(s *stack.Stack, key string) (uint16, error) {
	p, err := strconv.ParseUint(s.Env[key], 10, 16)
	if err != nil {
		return 0, fmt.Errorf("stack.env %s: %w", key, err)
	}
	return uint16(p), nil
}

// localpartChars are the characters of a chatmail local part.
const localpartChars = "abcdefghijklmnopqrstuvwxyz0123456789"

// NewLocalpart returns 9 random characters [a-z0-9], the kind of local part
// Delta Chat picks for a new chatmail profile.
func NewLocalpart() string {
	var b [9]byte
	rand.Read(b[:])
	for i, r := range b {
		b[i] = localpartChars[int(r)%len(localpartChars)]
	}
	return string(b[:])
}

// NewPassword returns a 22-character password like those Delta Chat
// generates for new chatmail profiles.
func NewPassword() string { return rand.Text()[:22] }

// MailFiles returns the files in the Maildir cur/ and new/ of addr on s:
// what the server holds for that user.
func MailFiles(s *stack.Stack, addr string) ([]string, error) {
	var files []string
	for _, sub := range []string{"cur", "new"} {
		f, err := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], addr, sub, "*"))
		if err != nil {
			return nil, err
		}
		files = append(files, f...)
	}
	return files, nil
}

// Profile is one configured Delta Chat profile.
type Profile struct {
	DisplayName string // which only peers may learn
	Addr        string
	Password    string
	Acc         *deltachat.Account
	seen        map[uint32]bool // messages Receive has returned
}

// NewProfile adds an account to rpc with fresh client-style credentials
// (NewLocalpart @ the stack's domain, NewPassword), configures it against
// s over IMAPS and SMTPS with the ports given explicitly, and starts its IO.
// The server creates the account at the first login.
//
// It sets bcc_self=1, what a profile on several devices has: core then
// leaves fetched mail on the server, so that callers can look at what the
// server held. With the default, one device, it deletes encrypted mail once
// fetched.
func NewProfile(ctx context.Context, rpc *deltachat.RPC, s *stack.Stack, displayName string) (*Profile, error) {
	return NewProfileVia(ctx, rpc, s, displayName, 0)
}

// NewProfileVia is NewProfile with the profile's outgoing mail sent to
// 127.0.0.1:smtpsPort (implicit TLS) instead of the stack's SMTPS port,
// e.g. to a recording proxy; 0 means the stack's. The stack is reached at
// its host (s.Host(): 127.0.0.1, or its network namespace's address).
func NewProfileVia(ctx context.Context, rpc *deltachat.RPC, s *stack.Stack, displayName string, smtpsPort uint16) (*Profile, error) {
	imaps, err := Port(s, "IMAPS_PORT")
	if err != nil {
		return nil, err
	}
	smtps, smtpHost := smtpsPort, "127.0.0.1"
	if smtps == 0 {
		if smtps, err = Port(s, "SMTPS_PORT"); err != nil {
			return nil, err
		}
		smtpHost = s.Host()
	}
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		return nil, err
	}
	p := &Profile{DisplayName: displayName, Addr: NewLocalpart() + "@" + s.Domain, Password: NewPassword(), Acc: acc}
	if err := acc.BatchSetConfig(ctx, map[string]string{"displayname": displayName, "bcc_self": "1"}); err != nil {
		return nil, err
	}
	err = acc.AddOrUpdateTransport(ctx, deltachat.TransportParams{
		Addr:              p.Addr,
		Password:          p.Password,
		IMAPServer:        s.Host(),
		IMAPPort:          imaps,
		IMAPSecurity:      deltachat.SecuritySSL,
		SMTPServer:        smtpHost,
		SMTPPort:          smtps,
		SMTPSecurity:      deltachat.SecuritySSL,
		CertificateChecks: deltachat.CertificateChecksAcceptInvalid,
	})
	if err != nil {
		return nil, fmt.Errorf("configuring %s (%s): %w", displayName, p.Addr, err)
	}
	if err := acc.StartIO(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Joined is the outcome of a SecureJoin.
type Joined struct {
	JoinerChat    uint32 // the joiner's chat: one-to-one or the group
	JoinerContact uint32 // the inviter's contact ID of the joiner
}

// SecureJoin has joiner scan inviter's QR code, for a one-to-one chat if
// groupID is 0, otherwise for that group, and waits until both sides are
// done.
func SecureJoin(ctx context.Context, inviter, joiner *Profile, groupID uint32) (Joined, error) {
	qr, err := inviter.Acc.SecureJoinQR(ctx, groupID)
	if err != nil {
		return Joined{}, err
	}
	return JoinByQR(ctx, inviter, joiner, qr)
}

// JoinByQR has joiner scan qr, an invitation of inviter's, and waits until
// both sides are done.
func JoinByQR(ctx context.Context, inviter, joiner *Profile, qr string) (Joined, error) {
	chatID, err := joiner.Acc.SecureJoin(ctx, qr)
	if err != nil {
		return Joined{}, fmt.Errorf("%s scanning %s's QR code: %w", joiner.DisplayName, inviter.DisplayName, err)
	}
	if err := joiner.Acc.WaitSecurejoinJoinerDone(ctx); err != nil {
		return Joined{}, fmt.Errorf("%s joining %s: %w", joiner.DisplayName, inviter.DisplayName, err)
	}
	// Not WaitSecurejoinInviterDone: the event names the joiner's contact.
	ev, err := inviter.Acc.WaitFor(ctx, func(ev deltachat.Event) bool {
		return ev.Kind == "SecurejoinInviterProgress" && (ev.Progress == 0 || ev.Progress == 1000)
	})
	if err != nil {
		return Joined{}, fmt.Errorf("%s waiting for %s to join: %w", inviter.DisplayName, joiner.DisplayName, err)
	}
	if ev.Progress != 1000 {
		return Joined{}, fmt.Errorf("%s: SecureJoin of %s failed: %v", inviter.DisplayName, joiner.DisplayName, ev)
	}
	return Joined{JoinerChat: chatID, JoinerContact: ev.ContactID}, nil
}

// Send sends data to a chat of from and waits until the server has taken
// it. It returns the message as from sees it then. A message core gave up
// on (MsgFailed) is an error with core's reason.
func Send(ctx context.Context, from *Profile, chatID uint32, data deltachat.MessageData) (*deltachat.Message, error) {
	id, err := from.Acc.SendMsg(ctx, chatID, data)
	if err != nil {
		return nil, fmt.Errorf("%s sending: %w", from.DisplayName, err)
	}
	if err := from.Acc.WaitMsgDelivered(ctx, id); err != nil {
		return nil, fmt.Errorf("%s sending %q: %w", from.DisplayName, data.Text, err)
	}
	return from.Acc.Message(ctx, id)
}

// Receive waits for the next message to p that is not an info message
// ("member added" and the like) and that Receive has not returned before,
// and returns it once downloaded in full.
func (p *Profile) Receive(ctx context.Context) (*deltachat.Message, error) {
	if p.seen == nil {
		p.seen = map[uint32]bool{}
	}
	for {
		msg, err := p.Acc.WaitIncomingMsg(ctx)
		if err != nil {
			return nil, err
		}
		// Core announces a large message again once it has the rest.
		if msg.IsInfo || p.seen[msg.ID] {
			continue
		}
		p.seen[msg.ID] = true
		return p.WaitDownloaded(ctx, msg.ID)
	}
}

// WaitDownloaded returns message msgID once it has been downloaded in
// full: core shows a message with a large attachment at once from a small
// pre-message, with a placeholder text, and fetches the rest separately.
func (p *Profile) WaitDownloaded(ctx context.Context, msgID uint32) (*deltachat.Message, error) {
	for {
		msg, err := p.Acc.Message(ctx, msgID)
		if err != nil {
			return nil, err
		}
		switch msg.DownloadState {
		case deltachat.DownloadDone:
			return msg, nil
		case deltachat.DownloadFailure, deltachat.DownloadUndecipherable:
			return nil, fmt.Errorf("%s: message %d: download state %s", p.DisplayName, msgID, msg.DownloadState)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%s: message %d still %q: %w", p.DisplayName, msgID, msg.DownloadState, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
