package integration

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"chatmail.dev/integration/chatflow"
	"chatmail.dev/integration/deltachat"
)

// matrixVersions are the older Delta Chat cores that must still work
// with the current one through our server; scripts/install-deps installs
// them under .deltachat/<version>/. 2.33.0 is the newest on npm before
// Secure-Join v3 (2.45), 1.160.0 the last before 2.0.
var matrixVersions = []string{"2.33.0", "1.160.0"}

// TestClientMatrix: a current client (2.62) and each older core, in
// both roles, meet by SecureJoin one-to-one and in a group, and exchange
// texts both ways and a file, end-to-end encrypted through our stack.
func TestClientMatrix(t *testing.T) {
	current := startDeltaChat(t)
	for _, v := range matrixVersions {
		bin, err := deltachat.FindVersionBinary(v)
		if err != nil {
			t.Fatal(err)
		}
		old := startDeltaChatBinary(t, bin)
		info, err := old.SystemInfo(waitCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := info["deltachat_core_version"]; got != "v"+v {
			t.Fatalf("%s reports core version %q, want v%s", bin, got, v)
		}
		t.Run(v, func(t *testing.T) {
			t.Run("old-inviter", func(t *testing.T) {
				t.Parallel()
				matrixPair(t, old, v, current, "2.62")
			})
			t.Run("old-joiner", func(t *testing.T) {
				t.Parallel()
				matrixPair(t, current, "2.62", old, v)
			})
		})
	}
}

// matrixPair: Alice on inviterRPC invites Bob on joinerRPC to a
// one-to-one chat and Carol, also on joinerRPC, to a group.
func matrixPair(t *testing.T, inviterRPC *deltachat.RPC, inviterVersion string, joinerRPC *deltachat.RPC, joinerVersion string) {
	s := shared
	alice := newChatter(t, inviterRPC, s, "Alice "+inviterVersion)
	bob := newChatter(t, joinerRPC, s, "Bob "+joinerVersion)
	carol := newChatter(t, joinerRPC, s, "Carol "+joinerVersion)

	j, err := chatflow.SecureJoin(waitCtx(t), alice.Profile, bob.Profile, 0)
	if err != nil {
		t.Fatalf("SecureJoin one-to-one: %v", err)
	}
	bobChat := j.JoinerChat
	aliceChat := alice.oneToOne(t, j.JoinerContact)

	matrixText(t, bob, bobChat, alice, aliceChat, secret("hello Alice, Bob here"))
	matrixText(t, alice, aliceChat, bob, bobChat, secret("hi Bob"))

	// A file, from the joiner's core to the inviter's.
	content := make([]byte, 300<<10)
	rand.Read(content)
	path := filepath.Join(t.TempDir(), "upload.bin")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	text := secret("the file")
	if _, err := chatflow.Send(waitCtx(t), bob.Profile, bobChat, deltachat.MessageData{Text: text, File: path, FileName: "report.bin", ViewType: "File"}); err != nil {
		t.Fatal(err)
	}
	msg := matrixReceive(t, alice, bob, aliceChat, text)
	// Cores before pre-messages (2.5x) show 2.62's pre-message, which
	// announces a large file, as a message of its own, and the file in
	// the next one.
	// The later message has the file, and no text in 2.33.
	for i := 0; msg.File == "" && i < 2; i++ {
		t.Logf("%s received %q without the file (a pre-message); waiting for the file", alice.DisplayName, msg.Text)
		next, err := alice.Receive(waitCtx(t))
		if err != nil {
			t.Fatalf("%s waiting for the file: %v", alice.DisplayName, err)
		}
		if next.Text != "" && next.Text != text || !next.ShowPadlock || next.ChatID != aliceChat {
			t.Fatalf("%s received %q (padlock %v) in chat %d, want the file in chat %d with a padlock", alice.DisplayName, next.Text, next.ShowPadlock, next.ChatID, aliceChat)
		}
		msg = next
	}
	got, err := os.ReadFile(msg.File)
	if err != nil {
		t.Fatalf("Alice's copy of the file: %v", err)
	}
	if len(got) != len(content) || sha256.Sum256(got) != sha256.Sum256(content) {
		t.Errorf("Alice got %d bytes with SHA-256 %x, want %d bytes with %x",
			len(got), sha256.Sum256(got), len(content), sha256.Sum256(content))
	}

	group, err := alice.Acc.CreateGroupChat(waitCtx(t), "Matrix "+rand.Text()[:6])
	if err != nil {
		t.Fatal(err)
	}
	jg, err := chatflow.SecureJoin(waitCtx(t), alice.Profile, carol.Profile, group)
	if err != nil {
		t.Fatalf("SecureJoin group: %v", err)
	}
	carolGroup := jg.JoinerChat
	matrixText(t, alice, group, carol, carolGroup, secret("welcome to the group, Carol"))
	matrixText(t, carol, carolGroup, alice, group, secret("thanks Alice"))
}

// matrixText sends text and checks that to receives it with a padlock.
func matrixText(t *testing.T, from *chatter, fromChat uint32, to *chatter, toChat uint32, text string) {
	t.Helper()
	msg, err := chatflow.Send(waitCtx(t), from.Profile, fromChat, deltachat.MessageData{Text: text})
	if err != nil {
		t.Fatal(err)
	}
	if !msg.ShowPadlock {
		t.Errorf("%s's sent %q shows no padlock", from.DisplayName, text)
	}
	matrixReceive(t, to, from, toChat, text)
}

// matrixReceive is receive for cores of every version: those before 2.0
// have no key contacts, so only the sender's address is checked.
func matrixReceive(t *testing.T, to, from *chatter, chatID uint32, text string) *deltachat.Message {
	t.Helper()
	msg, err := to.Receive(waitCtx(t))
	if err != nil {
		t.Fatalf("%s waiting for %q from %s: %v", to.DisplayName, text, from.DisplayName, err)
	}
	if msg.Text != text {
		t.Fatalf("%s received %q, want %q", to.DisplayName, msg.Text, text)
	}
	if !msg.ShowPadlock {
		t.Errorf("%s received %q without a padlock", to.DisplayName, text)
	}
	if msg.ChatID != chatID {
		t.Errorf("%s received %q in chat %d, want chat %d", to.DisplayName, text, msg.ChatID, chatID)
	}
	if ct := to.contact(t, msg.FromID); ct.Address != from.Addr {
		t.Errorf("%s received %q from %s, want %s", to.DisplayName, text, ct.Address, from.Addr)
	}
	return msg
}

// TestOldCoresSeeChatmail: cores that still record it (before 2.54)
// recognise our server as a chatmail server, by its IMAP capability
// XCHATMAIL. Without it they treat it as classic email: cores before 2.0
// keep moving mail to a "DeltaChat" folder (mvbox_move), which a chatmail
// server need not allow, and delete less from the server.
func TestOldCoresSeeChatmail(t *testing.T) {
	for _, v := range matrixVersions {
		t.Run(v, func(t *testing.T) {
			bin, err := deltachat.FindVersionBinary(v)
			if err != nil {
				t.Fatal(err)
			}
			c := newChatter(t, startDeltaChatBinary(t, bin), shared, "Alice "+v)
			// Some cores set is_chatmail only once their IMAP loop has
			// seen the capabilities, after configure returns.
			eventually(t, 30*time.Second, func() error {
				got, err := c.Acc.Config(waitCtx(t), "is_chatmail")
				if err != nil {
					return fmt.Errorf("core %s has no is_chatmail config key to check: %v", v, err)
				}
				if got != "1" {
					mvbox, _ := c.Acc.Config(waitCtx(t), "mvbox_move")
					return fmt.Errorf("core %s: is_chatmail = %q (mvbox_move %q), want 1: does the server announce XCHATMAIL?", v, got, mvbox)
				}
				return nil
			})
		})
	}
}
