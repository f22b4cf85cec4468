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
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"chatmail.dev/integration/chatflow"
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
	*chatflow.Profile
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
	return startDeltaChatBinary(t, binary)
}

// startDeltaChatBinary runs one deltachat-rpc-server binary for t, as
// startDeltaChat does.
func startDeltaChatBinary(t *testing.T, binary string) *deltachat.RPC {
	t.Helper()
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

// newChatter creates a profile with fresh client-style credentials and
// configures it against s; the server creates the account at first login.
func newChatter(t *testing.T, rpc *deltachat.RPC, s *stack.Stack, name string) *chatter {
	t.Helper()
	p, err := chatflow.NewProfile(waitCtx(t), rpc, s, name)
	if err != nil {
		t.Fatal(err)
	}
	c := &chatter{p}
	t.Cleanup(func() {
		if t.Failed() {
			logServerLines(t, s, c.Addr)
		}
	})
	if n := countAccounts(t, s, c.Addr); n != 1 {
		t.Fatalf("%s configured, but the server has %d accounts for %s", name, n, c.Addr)
	}
	return c
}

// logServerLines logs the last lines of the stack's logs that name addr,
// to explain a failure: Postfix's and Dovecot's (chatmail-logd's output),
// the milter's and doveauth's.
func logServerLines(t *testing.T, s *stack.Stack, addr string) {
	for _, path := range []string{s.Env["LOGD_OUTPUT"], filepath.Join(s.Env["LOG_DIR"], "milter.log"), filepath.Join(s.Env["LOG_DIR"], "doveauth.log")} {
		name := filepath.Base(path)
		b, err := os.ReadFile(path)
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

// contact returns what c shows about a contact.
func (c *chatter) contact(t *testing.T, contactID uint32) *deltachat.Contact {
	t.Helper()
	ct, err := c.Acc.Contact(waitCtx(t), contactID)
	if err != nil {
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
	j, err := chatflow.SecureJoin(waitCtx(t), inviter.Profile, joiner.Profile, groupID)
	if err != nil {
		t.Fatal(err)
	}
	if ct := inviter.contact(t, j.JoinerContact); ct.Address != joiner.Addr || !ct.IsKeyContact || !ct.E2EEAvail {
		t.Errorf("%s sees the joiner as %+v, want %s as a key contact with encryption", inviter.DisplayName, ct, joiner.Addr)
	}
	return j.JoinerChat, j.JoinerContact
}

// meet starts a client with two fresh profiles, Alice and Bob, who meet
// by SecureJoin; it returns them and their one-to-one chats.
func meet(t *testing.T, s *stack.Stack) (alice, bob *chatter, aliceChat, bobChat uint32) {
	t.Helper()
	rpc := startDeltaChat(t)
	alice = newChatter(t, rpc, s, "Alice Liddell")
	bob = newChatter(t, rpc, s, "Bob Dylan")
	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	return alice, bob, alice.oneToOne(t, bobInAlice), bobChat
}

// wantChat checks what a profile shows for a chat.
func wantChat(t *testing.T, c *chatter, chatID uint32, chatType string) {
	t.Helper()
	chat, err := c.Acc.Chat(waitCtx(t), chatID)
	if err != nil {
		t.Fatal(err)
	}
	if chat.ChatType != chatType || !chat.IsEncrypted || chat.IsContactRequest {
		t.Errorf("%s's chat %d = %+v, want an accepted, encrypted %s chat", c.DisplayName, chatID, chat, chatType)
	}
}

// oneToOne returns c's one-to-one chat with a contact.
func (c *chatter) oneToOne(t *testing.T, contactID uint32) uint32 {
	t.Helper()
	id, err := c.Acc.CreateChatByContactID(waitCtx(t), contactID)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// send sends data to a chat and waits until the server has taken it.
func send(t *testing.T, from *chatter, chatID uint32, data deltachat.MessageData) uint32 {
	t.Helper()
	msg, err := chatflow.Send(waitCtx(t), from.Profile, chatID, data)
	if err != nil {
		t.Fatal(err)
	}
	if !msg.ShowPadlock || msg.State != deltachat.MsgStateOutDelivered {
		t.Errorf("%s's sent message: padlock %v, state %d; want a padlock and delivered (%d)",
			from.DisplayName, msg.ShowPadlock, msg.State, deltachat.MsgStateOutDelivered)
	}
	return msg.ID
}

// receive waits for the next message to to that is not an info message
// ("member added" and the like) and checks that it is the text from sender
// in chat chatID (any chat if 0), shown with a padlock.
func receive(t *testing.T, to, from *chatter, chatID uint32, text string) *deltachat.Message {
	t.Helper()
	msg, err := to.Receive(waitCtx(t))
	if err != nil {
		t.Fatalf("%s waiting for %q from %s: %v", to.DisplayName, text, from.DisplayName, err)
	}
	wantReceived(t, to, from, chatID, msg, text)
	return msg
}

// wantReceived checks that msg, which to received, is text from sender in
// chat chatID (any chat if 0), shown with a padlock.
func wantReceived(t *testing.T, to, from *chatter, chatID uint32, msg *deltachat.Message, text string) {
	t.Helper()
	if msg.Text != text {
		t.Fatalf("%s received %q, want %q", to.DisplayName, msg.Text, text)
	}
	if !msg.ShowPadlock {
		t.Errorf("%s received %q without a padlock", to.DisplayName, text)
	}
	if chatID != 0 && msg.ChatID != chatID {
		t.Errorf("%s received %q in chat %d, want chat %d", to.DisplayName, text, msg.ChatID, chatID)
	}
	if ct := to.contact(t, msg.FromID); ct.Address != from.Addr || ct.DisplayName != from.DisplayName || !ct.IsKeyContact {
		t.Errorf("%s received %q from %+v, want %s <%s>", to.DisplayName, text, ct, from.DisplayName, from.Addr)
	}
}

// wantNothingIncoming checks that c shows no new message, other than info
// messages, for d.
func wantNothingIncoming(t *testing.T, c *chatter, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	for {
		msg, err := c.Acc.WaitIncomingMsg(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", c.DisplayName, err)
		}
		if !msg.IsInfo {
			t.Errorf("%s received %q (padlock %v), want nothing", c.DisplayName, msg.Text, msg.ShowPadlock)
		}
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
	files, err := chatflow.MailFiles(s, addr)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// wantServerBlind checks that every message the server holds for users is
// PGP ciphertext and that none contains any of secrets.
func wantServerBlind(t *testing.T, s *stack.Stack, users []*chatter, secrets []string) {
	t.Helper()
	for _, u := range users {
		files := serverMail(t, s, u.Addr)
		if len(files) == 0 {
			t.Errorf("the server holds no mail for %s (%s); nothing to check", u.DisplayName, u.Addr)
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
		t.Logf("%s: %d messages on the server checked", u.Addr, len(files))
	}
}

// TestChatOneToOne: two fresh profiles meet by SecureJoin and talk, both
// ways, end-to-end encrypted; the server only ever holds ciphertext.
func TestChatOneToOne(t *testing.T) {
	s := shared
	alice, bob, aliceChat, bobChat := meet(t, s)
	wantChat(t, bob, bobChat, "Single")
	wantChat(t, alice, aliceChat, "Single")

	secrets := []string{alice.DisplayName, bob.DisplayName}
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
	group, err := alice.Acc.CreateGroupChat(waitCtx(t), groupName)
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Acc.AddContactToChat(waitCtx(t), group, bobInAlice); err != nil {
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
	if chat, err := bob.Acc.Chat(waitCtx(t), bobGroup); err != nil || chat.Name != groupName {
		t.Errorf("Bob's group chat = %+v, %v; want name %q", chat, err, groupName)
	}

	reply := secret("thanks Alice, Carol speaking")
	send(t, carol, carolGroup, deltachat.MessageData{Text: reply})
	receive(t, alice, carol, group, reply)
	receive(t, bob, carol, bobGroup, reply)

	wantServerBlind(t, s, users, []string{alice.DisplayName, bob.DisplayName, carol.DisplayName, groupName, text, reply})
}

// sendFile sends a random 1 MB file named prefix-RANDOM.bin with a text
// saying what from from (in its chat fromChat) to to (in toChat), and
// checks that it arrives intact; it returns the text, the file's name and
// its content.
func sendFile(t *testing.T, from *chatter, fromChat uint32, to *chatter, toChat uint32, prefix, what string) (text, fileName string, content []byte) {
	t.Helper()
	content = make([]byte, 1<<20)
	rand.Read(content)
	path := filepath.Join(t.TempDir(), "upload.bin")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	fileName = prefix + "-" + rand.Text()[:6] + ".bin"
	text = secret(what)
	send(t, from, fromChat, deltachat.MessageData{Text: text, File: path, FileName: fileName, ViewType: "File"})
	msg := receive(t, to, from, toChat, text)
	got, err := os.ReadFile(msg.File)
	if err != nil {
		t.Fatalf("%s's copy of the file: %v", to.DisplayName, err)
	}
	if len(got) != len(content) || sha256.Sum256(got) != sha256.Sum256(content) {
		t.Errorf("%s got %d bytes with SHA-256 %x, want %d bytes with %x",
			to.DisplayName, len(got), sha256.Sum256(got), len(content), sha256.Sum256(content))
	}
	if msg.FileName != fileName || msg.FileBytes != uint64(len(content)) {
		t.Errorf("%s sees the file as %q, %d bytes; want %q, %d bytes", to.DisplayName, msg.FileName, msg.FileBytes, fileName, len(content))
	}
	return text, fileName, content
}

// TestChatAttachment: a 1 MB file arrives intact and encrypted.
func TestChatAttachment(t *testing.T) {
	s := shared
	alice, bob, aliceChat, bobChat := meet(t, s)
	text, fileName, content := sendFile(t, alice, aliceChat, bob, bobChat, "holiday", "the file you asked for")
	// A leaked attachment would show up as its base64 body.
	leak := base64.StdEncoding.EncodeToString(content[:48])
	wantServerBlind(t, s, []*chatter{alice, bob}, []string{text, fileName, leak})
	// And the file did pass through the server, as ciphertext.
	var largest int64
	for _, f := range serverMail(t, s, bob.Addr) {
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

// TestChatBlockedAccount: once the admin blocks Bob, his app can no longer
// log in or send, and Alice gets nothing from him; once unblocked, his
// queued message and new ones reach Alice, encrypted.
func TestChatBlockedAccount(t *testing.T) {
	s := shared
	alice, bob, aliceChat, bobChat := meet(t, s)
	sendText(t, bob, bobChat, alice, aliceChat, secret("hi Alice, Bob here"))
	sendText(t, alice, aliceChat, bob, bobChat, secret("hi Bob"))

	if out := s.Admin(t, "block", bob.Addr); !contains(out, "blocked") {
		t.Errorf("admin block said %q", out)
	}
	wantLogin(t, s, bob.Addr, bob.Password, imap.ResponseCodeAuthenticationFailed)

	// Blocking ends Bob's IMAP sessions (doveadm kick), and Postfix asks
	// doveauth about every message, so the SMTP session his app still has
	// open cannot send either.
	ctx := waitCtx(t)
	blockedText := secret("Alice, can you read this?")
	blockedMsg, err := bob.Acc.SendMsg(ctx, bobChat, deltachat.MessageData{Text: blockedText})
	if err != nil {
		t.Fatal(err)
	}
	// Over the open session the core gets the block as a permanent refusal
	// (the message fails, with the server's reason); over a new one as a
	// login failure (a warning, and the message stays queued).
	ev, err := bob.Acc.WaitFor(ctx, func(ev deltachat.Event) bool {
		return (ev.Kind == "Warning" || ev.Kind == "Error") && contains(ev.Msg, "SMTP failed to login") ||
			(ev.Kind == "MsgDelivered" || ev.Kind == "MsgFailed") && ev.MsgID == blockedMsg
	})
	if err != nil {
		t.Fatalf("Bob's app reported no failure: %v", err)
	}
	if ev.Kind == "MsgDelivered" {
		t.Fatalf("a blocked account sent a message: %v", ev)
	}
	msg, err := bob.Acc.Message(waitCtx(t), blockedMsg)
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case msg.State == deltachat.MsgStateOutFailed:
		if !contains(msg.Error, "blocked") {
			t.Errorf("Bob's failed message says %q, want the server's reason (blocked)", msg.Error)
		}
	case !contains(ev.Msg, "5.7.8"):
		t.Errorf("Bob's app reported %v, want the server's 5.7.8 authentication failure", ev)
	}
	t.Logf("Bob's app: %v; message state %d, error %q", ev, msg.State, msg.Error)
	wantNothingIncoming(t, alice, 10*time.Second)
	if msg, err = bob.Acc.Message(waitCtx(t), blockedMsg); err != nil {
		t.Fatal(err)
	}
	if msg.State == deltachat.MsgStateOutDelivered {
		t.Errorf("Bob's message shows as delivered while he is blocked")
	}
	queued := msg.State != deltachat.MsgStateOutFailed

	s.Admin(t, "unblock", bob.Addr)
	wantLogin(t, s, bob.Addr, bob.Password, "")
	// A new message wakes the app's SMTP loop, which also sends one still
	// queued from the blocked time.
	againText := secret("Alice, I am back")
	send(t, bob, bobChat, deltachat.MessageData{Text: againText})
	want := map[string]bool{againText: true}
	if queued {
		if err := bob.Acc.WaitMsgDelivered(waitCtx(t), blockedMsg); err != nil {
			t.Errorf("Bob's message queued while blocked: %v", err)
		}
		want[blockedText] = true
	}
	for len(want) > 0 {
		msg, err := alice.Receive(waitCtx(t))
		if err != nil {
			t.Fatalf("Alice waiting for Bob's messages %q: %v", slices.Collect(maps.Keys(want)), err)
		}
		if !want[msg.Text] {
			t.Fatalf("Alice received %q, want one of %q", msg.Text, slices.Collect(maps.Keys(want)))
		}
		delete(want, msg.Text)
		wantReceived(t, alice, bob, aliceChat, msg, msg.Text)
	}
}

// TestChatCleartextRefused: Alice's credentials, used by something other
// than her app, cannot send Bob a message in the clear: the server refuses
// it at submission with 523, as Delta Chat would show, and Bob never sees it.
func TestChatCleartextRefused(t *testing.T) {
	s := shared
	alice, bob, aliceChat, bobChat := meet(t, s)
	// The way from Alice to Bob works, encrypted.
	sendText(t, alice, aliceChat, bob, bobChat, secret("hi Bob, Alice here"))

	before := map[string]bool{}
	for _, f := range serverMail(t, s, bob.Addr) {
		before[maildirKey(f)] = true
	}
	bob.Acc.DiscardEvents()
	text := secret("Bob, this one is in the clear")
	msg := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: hello\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
		alice.Addr, bob.Addr, time.Now().Format(time.RFC1123Z), rand.Text(), s.Domain, text)
	err := submit(s, alice.Addr, alice.Password, bob.Addr, msg)
	if code, reply := smtpCode(err); code != 523 || !contains(reply, "Invalid Unencrypted Mail") {
		t.Errorf("cleartext submission with Alice's credentials: %v, want 523 with \"Invalid Unencrypted Mail\"", err)
	}

	wantNothingIncoming(t, bob, 5*time.Second)
	for _, f := range serverMail(t, s, bob.Addr) {
		if !before[maildirKey(f)] {
			t.Errorf("Bob has a new message on the server after the refused submission: %s", f)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), text) {
			t.Errorf("%s holds the refused text", f)
		}
	}
}

// maildirKey returns the unique part of a Maildir file name, which stays
// when the file moves from new/ to cur/ or its flags change.
func maildirKey(path string) string {
	name, _, _ := strings.Cut(filepath.Base(path), ":")
	return name
}
