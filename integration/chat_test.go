package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// chatWait bounds each wait for something a client does over the network.
// Stock Dovecot adds about half a second per hop; this is generous.
const chatWait = 60 * time.Second

// pgpArmor is the line every encrypted body on the server must carry.
const pgpArmor = "-----BEGIN PGP MESSAGE-----"

// chatter is one Delta Chat profile, configured against the shared stack.
type chatter struct {
	name     string // display name, which only peers may learn
	addr     string
	password string
	rpc      *deltachat.RPC
	acc      *deltachat.Account
	received map[uint32]bool // messages receive has returned
}

// waitCtx returns a context for one wait.
func waitCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), chatWait)
	t.Cleanup(cancel)
	return ctx
}

// startDeltaChat runs one deltachat-rpc-server for t with its accounts in a
// temporary directory. A missing binary fails the test: these tests exist to
// show that real clients work.
func startDeltaChat(t *testing.T) *deltachat.RPC {
	t.Helper()
	binary, err := deltachat.FindBinary()
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer // written under the RPC's lock, read after Close
	rpc, err := deltachat.Start(waitCtx(t), deltachat.Options{
		Binary:      binary,
		AccountsDir: filepath.Join(t.TempDir(), "accounts"),
		Log:         &log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := rpc.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() && log.Len() > 0 {
			t.Logf("deltachat-rpc-server warnings and errors (last lines):\n%s", lastLines(log.String(), 100))
		}
	})
	return rpc
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// clientPassword returns a 22-character password like those Delta Chat
// generates for new chatmail profiles.
func clientPassword() string {
	return rand.Text()[:22]
}

// stackPort returns a port of s from stack.env as a number.
func stackPort(t *testing.T, s *stack.Stack, key string) uint16 {
	t.Helper()
	p, err := strconv.ParseUint(s.Env[key], 10, 16)
	if err != nil {
		t.Fatalf("stack.env %s: %v", key, err)
	}
	return uint16(p)
}

// newChatter creates a profile with fresh client-style credentials and
// configures it against s; the server creates the account at first login.
func newChatter(t *testing.T, rpc *deltachat.RPC, s *stack.Stack, name string) *chatter {
	t.Helper()
	ctx := waitCtx(t)
	acc, err := rpc.AddAccount(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &chatter{name: name, addr: newAddr(s), password: clientPassword(), rpc: rpc, acc: acc, received: map[uint32]bool{}}
	// bcc_self=1 is what a profile on several devices has: core then
	// leaves fetched mail on the server, so that the test can look at what
	// the server held. With the default, one device, it deletes encrypted
	// mail once fetched.
	if err := acc.BatchSetConfig(ctx, map[string]string{"displayname": name, "bcc_self": "1"}); err != nil {
		t.Fatal(err)
	}
	err = acc.AddOrUpdateTransport(ctx, deltachat.TransportParams{
		Addr:              c.addr,
		Password:          c.password,
		IMAPServer:        "127.0.0.1",
		IMAPPort:          stackPort(t, s, "IMAPS_PORT"),
		IMAPSecurity:      deltachat.SecuritySSL,
		SMTPServer:        "127.0.0.1",
		SMTPPort:          stackPort(t, s, "SMTPS_PORT"),
		SMTPSecurity:      deltachat.SecuritySSL,
		CertificateChecks: deltachat.CertificateChecksAcceptInvalid,
	})
	if err != nil {
		t.Fatalf("configuring %s (%s): %v", name, c.addr, err)
	}
	if err := acc.StartIO(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logServerLines(t, s, c.addr)
		}
	})
	if n := countAccounts(t, s, c.addr); n != 1 {
		t.Fatalf("%s configured, but the server has %d accounts for %s", name, n, c.addr)
	}
	return c
}

// logServerLines logs the last lines of the stack's logs that name addr,
// to explain a failure.
func logServerLines(t *testing.T, s *stack.Stack, addr string) {
	for _, name := range []string{"postfix.log", "milter.log", "dovecot.log", "doveauth.log"} {
		b, err := os.ReadFile(filepath.Join(s.Env["LOG_DIR"], name))
		if errors.Is(err, fs.ErrNotExist) {
			continue // the milter may not run
		}
		if err != nil {
			t.Error(err)
			continue
		}
		var lines []string
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, addr) {
				lines = append(lines, line)
			}
		}
		t.Logf("%s lines naming %s (last 30):\n%s", name, addr, lastLines(strings.Join(lines, "\n"), 30))
	}
}

// contact is what a profile shows about a contact.
type contact struct {
	Address     string `json:"address"`
	DisplayName string `json:"displayName"`
	// IsKeyContact: the contact is known by its key, as after SecureJoin,
	// not by its address only.
	IsKeyContact bool `json:"isKeyContact"`
	E2EEAvail    bool `json:"e2eeAvail"`
}

func (c *chatter) contact(t *testing.T, contactID uint32) contact {
	t.Helper()
	var ct contact
	if err := c.rpc.Call(waitCtx(t), "get_contact", []any{c.acc.ID, contactID}, &ct); err != nil {
		t.Fatal(err)
	}
	return ct
}

// secureJoin has joiner scan inviter's QR code, for a one-to-one chat if
// groupID is 0, otherwise for that group, and waits until both sides are
// done. It returns the joiner's chat and the inviter's contact ID of the
// joiner.
func secureJoin(t *testing.T, inviter, joiner *chatter, groupID uint32) (joinerChat, joinerContact uint32) {
	t.Helper()
	ctx := waitCtx(t)
	qr, err := inviter.acc.SecureJoinQR(ctx, groupID)
	if err != nil {
		t.Fatal(err)
	}
	joinerChat, err = joiner.acc.SecureJoin(ctx, qr)
	if err != nil {
		t.Fatalf("%s scanning %s's QR code: %v", joiner.name, inviter.name, err)
	}
	if err := joiner.acc.WaitSecurejoinJoinerDone(ctx); err != nil {
		t.Fatalf("%s joining %s: %v", joiner.name, inviter.name, err)
	}
	ev, err := inviter.acc.WaitFor(ctx, func(ev deltachat.Event) bool {
		return ev.Kind == "SecurejoinInviterProgress" && (ev.Progress == 0 || ev.Progress == 1000)
	})
	if err != nil {
		t.Fatalf("%s waiting for %s to join: %v", inviter.name, joiner.name, err)
	}
	if ev.Progress != 1000 {
		t.Fatalf("%s: SecureJoin of %s failed: %v", inviter.name, joiner.name, ev)
	}
	if ct := inviter.contact(t, ev.ContactID); ct.Address != joiner.addr || !ct.IsKeyContact || !ct.E2EEAvail {
		t.Errorf("%s sees the joiner as %+v, want %s as a key contact with encryption", inviter.name, ct, joiner.addr)
	}
	return joinerChat, ev.ContactID
}

// wantChat checks what a profile shows for a chat.
func wantChat(t *testing.T, c *chatter, chatID uint32, chatType string) {
	t.Helper()
	chat, err := c.acc.Chat(waitCtx(t), chatID)
	if err != nil {
		t.Fatal(err)
	}
	if chat.ChatType != chatType || !chat.IsEncrypted || chat.IsContactRequest {
		t.Errorf("%s's chat %d = %+v, want an accepted, encrypted %s chat", c.name, chatID, chat, chatType)
	}
}

// oneToOne returns c's one-to-one chat with a contact.
func (c *chatter) oneToOne(t *testing.T, contactID uint32) uint32 {
	t.Helper()
	id, err := c.acc.CreateChatByContactID(waitCtx(t), contactID)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// send sends data to a chat and waits until the server has taken it.
func send(t *testing.T, from *chatter, chatID uint32, data deltachat.MessageData) uint32 {
	t.Helper()
	ctx := waitCtx(t)
	id, err := from.acc.SendMsg(ctx, chatID, data)
	if err != nil {
		t.Fatalf("%s sending: %v", from.name, err)
	}
	if err := from.acc.WaitMsgDelivered(ctx, id); err != nil {
		t.Fatalf("%s sending %q: %v", from.name, data.Text, err)
	}
	msg, err := from.acc.Message(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !msg.ShowPadlock || msg.State != deltachat.MsgStateOutDelivered {
		t.Errorf("%s's sent message: padlock %v, state %d; want a padlock and delivered (%d)",
			from.name, msg.ShowPadlock, msg.State, deltachat.MsgStateOutDelivered)
	}
	return id
}

// receive waits for the next message to to that is not an info message
// ("member added" and the like) and checks that it is the text from sender
// in chat chatID (any chat if 0), shown with a padlock.
func receive(t *testing.T, to, from *chatter, chatID uint32, text string) *deltachat.Message {
	t.Helper()
	ctx := waitCtx(t)
	for {
		msg, err := to.acc.WaitIncomingMsg(ctx)
		if err != nil {
			t.Fatalf("%s waiting for %q from %s: %v", to.name, text, from.name, err)
		}
		// Core announces a large message again once it has the rest.
		if msg.IsInfo || to.received[msg.ID] {
			continue
		}
		to.received[msg.ID] = true
		msg = waitDownloaded(t, to, msg)
		if msg.Text != text {
			t.Fatalf("%s received %q, want %q", to.name, msg.Text, text)
		}
		if !msg.ShowPadlock {
			t.Errorf("%s received %q without a padlock", to.name, text)
		}
		if chatID != 0 && msg.ChatID != chatID {
			t.Errorf("%s received %q in chat %d, want chat %d", to.name, text, msg.ChatID, chatID)
		}
		if ct := to.contact(t, msg.FromID); ct.Address != from.addr || ct.DisplayName != from.name || !ct.IsKeyContact {
			t.Errorf("%s received %q from %+v, want %s <%s>", to.name, text, ct, from.name, from.addr)
		}
		return msg
	}
}

// sendText sends text and checks that to receives it.
func sendText(t *testing.T, from *chatter, fromChat uint32, to *chatter, toChat uint32, text string) {
	t.Helper()
	send(t, from, fromChat, deltachat.MessageData{Text: text})
	receive(t, to, from, toChat, text)
}

// secret returns a message text that cannot occur in base64 or armored
// ciphertext by chance: it has spaces and punctuation.
func secret(what string) string {
	return fmt.Sprintf("%s, secret %s!", what, rand.Text()[:8])
}

// serverMail returns the files in the Maildir cur/ and new/ of addr.
func serverMail(t *testing.T, s *stack.Stack, addr string) []string {
	t.Helper()
	var files []string
	for _, sub := range []string{"cur", "new"} {
		f, err := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], addr, sub, "*"))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f...)
	}
	return files
}

// wantServerBlind checks that every message the server holds for users is
// PGP ciphertext and that none contains any of secrets.
func wantServerBlind(t *testing.T, s *stack.Stack, users []*chatter, secrets []string) {
	t.Helper()
	for _, u := range users {
		files := serverMail(t, s, u.addr)
		if len(files) == 0 {
			t.Errorf("the server holds no mail for %s (%s); nothing to check", u.name, u.addr)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			mail := string(b)
			if !strings.Contains(mail, pgpArmor) || !strings.Contains(mail, "multipart/encrypted") {
				t.Errorf("%s holds a message that is not PGP/MIME:\n%s", f, lastLines(mail, 40))
			}
			for _, sec := range secrets {
				if strings.Contains(mail, sec) {
					t.Errorf("%s contains %q in the clear", f, sec)
				}
			}
		}
		t.Logf("%s: %d messages on the server checked", u.addr, len(files))
	}
}

// TestChatOneToOne: two fresh profiles meet by SecureJoin and talk, both
// ways, end-to-end encrypted; the server only ever holds ciphertext.
func TestChatOneToOne(t *testing.T) {
	s := shared
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, s, "Alice Liddell")
	bob := newChatter(t, rpc, s, "Bob Dylan")

	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	aliceChat := alice.oneToOne(t, bobInAlice)
	wantChat(t, bob, bobChat, "Single")
	wantChat(t, alice, aliceChat, "Single")

	secrets := []string{alice.name, bob.name}
	for i := range 2 {
		text := secret(fmt.Sprintf("hello Alice, this is Bob (%d)", i))
		sendText(t, bob, bobChat, alice, aliceChat, text)
		secrets = append(secrets, text)
		text = secret(fmt.Sprintf("hi Bob, Alice here (%d)", i))
		sendText(t, alice, aliceChat, bob, bobChat, text)
		secrets = append(secrets, text)
	}
	wantServerBlind(t, s, []*chatter{alice, bob}, secrets)
}

// TestChatGroup: Bob is added to a group after a one-to-one SecureJoin,
// Carol joins with the group's QR code; messages reach both others.
func TestChatGroup(t *testing.T) {
	s := shared
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, s, "Alice Liddell")
	bob := newChatter(t, rpc, s, "Bob Dylan")
	carol := newChatter(t, rpc, s, "Carol King")
	users := []*chatter{alice, bob, carol}

	_, bobInAlice := secureJoin(t, alice, bob, 0)
	groupName := "Tea Party " + rand.Text()[:6]
	group, err := alice.acc.CreateGroupChat(waitCtx(t), groupName)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.acc.AddContactToChat(waitCtx(t), group, bobInAlice); err != nil {
		t.Fatal(err)
	}
	carolGroup, _ := secureJoin(t, alice, carol, group)
	wantChat(t, carol, carolGroup, "Group")

	text := secret("welcome to the party, Bob and Carol")
	send(t, alice, group, deltachat.MessageData{Text: text})
	bobMsg := receive(t, bob, alice, 0, text)
	receive(t, carol, alice, carolGroup, text)
	bobGroup := bobMsg.ChatID
	wantChat(t, bob, bobGroup, "Group")
	if chat, err := bob.acc.Chat(waitCtx(t), bobGroup); err != nil || chat.Name != groupName {
		t.Errorf("Bob's group chat = %+v, %v; want name %q", chat, err, groupName)
	}

	reply := secret("thanks Alice, Carol speaking")
	send(t, carol, carolGroup, deltachat.MessageData{Text: reply})
	receive(t, alice, carol, group, reply)
	receive(t, bob, carol, bobGroup, reply)

	wantServerBlind(t, s, users, []string{alice.name, bob.name, carol.name, groupName, text, reply})
}

// TestChatAttachment: a 1 MB file arrives intact and encrypted.
func TestChatAttachment(t *testing.T) {
	s := shared
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, s, "Alice Liddell")
	bob := newChatter(t, rpc, s, "Bob Dylan")
	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	aliceChat := alice.oneToOne(t, bobInAlice)

	content := make([]byte, 1<<20)
	rand.Read(content)
	path := filepath.Join(t.TempDir(), "upload.bin")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	fileName := "holiday-" + rand.Text()[:6] + ".bin"
	text := secret("the file you asked for")
	send(t, alice, aliceChat, deltachat.MessageData{Text: text, File: path, FileName: fileName, ViewType: "File"})
	msg := receive(t, bob, alice, bobChat, text)

	got, err := os.ReadFile(msg.File)
	if err != nil {
		t.Fatalf("Bob's copy of the file: %v", err)
	}
	if len(got) != len(content) || sha256.Sum256(got) != sha256.Sum256(content) {
		t.Errorf("Bob got %d bytes with SHA-256 %x, want %d bytes with %x",
			len(got), sha256.Sum256(got), len(content), sha256.Sum256(content))
	}
	if msg.FileName != fileName || msg.FileBytes != uint64(len(content)) {
		t.Errorf("Bob sees the file as %q, %d bytes; want %q, %d bytes", msg.FileName, msg.FileBytes, fileName, len(content))
	}
	// A leaked attachment would show up as its base64 body.
	leak := base64.StdEncoding.EncodeToString(content[:48])
	wantServerBlind(t, s, []*chatter{alice, bob}, []string{text, fileName, leak})
	// And the file did pass through the server, as ciphertext.
	var largest int64
	for _, f := range serverMail(t, s, bob.addr) {
		fi, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		largest = max(largest, fi.Size())
	}
	if largest < int64(len(content)) {
		t.Errorf("Bob's largest message on the server has %d bytes, less than the %d-byte file", largest, len(content))
	}
}

// waitDownloaded returns msg once it has been downloaded in full: core
// shows a message with a large attachment at once from a small
// pre-message, with a placeholder text, and fetches the rest separately.
func waitDownloaded(t *testing.T, c *chatter, msg *deltachat.Message) *deltachat.Message {
	t.Helper()
	ctx := waitCtx(t)
	for {
		var state struct {
			DownloadState string `json:"downloadState"`
		}
		if err := c.rpc.Call(ctx, "get_message", []any{c.acc.ID, msg.ID}, &state); err != nil {
			t.Fatal(err)
		}
		if state.DownloadState == "Done" {
			break
		}
		if state.DownloadState == "Failure" || state.DownloadState == "Undecipherable" {
			t.Fatalf("%s: message %d: download state %s", c.name, msg.ID, state.DownloadState)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: message %d still %q: %v", c.name, msg.ID, state.DownloadState, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	msg, err := c.acc.Message(ctx, msg.ID)
	if err != nil {
		t.Fatal(err)
	}
	return msg
}
