package integration

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"chatmail.dev/integration/stack"
)

// deltaChatHeaders are the header fields Delta Chat fetches of every new
// message before it downloads it (chatmail/core's prefetch, captured with
// core 2.62).
var deltaChatHeaders = []string{"MESSAGE-ID", "DATE", "X-MICROSOFT-ORIGINAL-MESSAGE-ID", "FROM", "CONTENT-TYPE", "SECURE-JOIN", "CHAT-VERSION", "CHAT-IS-POST-MESSAGE", "AUTOCRYPT-SETUP-MESSAGE"}

// lmtpDeliverFrom hands Dovecot's LMTP a message with the given From
// address and Message-ID.
func lmtpDeliverFrom(t *testing.T, s *stack.Stack, to, from, msgID string) {
	t.Helper()
	c, err := lmtpSession(s, to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "From: <%s>\r\nTo: <%s>\r\nMessage-ID: <%s>\r\nDate: Sat, 29 Nov 2025 12:00:00 +0000\r\nChat-Version: 1.0\r\nSubject: [...]\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n", from, to, msgID)
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatalf("LMTP delivery: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

// prefetch fetches the new messages' header fields as Delta Chat does:
// UID FETCH n:* (UID RFC822.SIZE BODY.PEEK[HEADER.FIELDS (...)]).
func prefetch(t *testing.T, c *imapclient.Client, from imap.UID) []*imapclient.FetchMessageBuffer {
	t.Helper()
	section := &imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: deltaChatHeaders, Peek: true}
	msgs, err := c.Fetch(imap.UIDSet{imap.UIDRange{Start: from}}, &imap.FetchOptions{UID: true, RFC822Size: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
	if err != nil {
		t.Fatalf("UID FETCH of the headers: %v", err)
	}
	return msgs
}

// filesHolding returns the files under dir that contain any of needles.
func filesHolding(t *testing.T, dir string, needles []string) []string {
	t.Helper()
	var found []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, n := range needles {
			if bytes.Contains(b, []byte(n)) {
				found = append(found, fmt.Sprintf("%s (%s)", strings.TrimPrefix(p, dir+"/"), n))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// Once a message is expunged, nothing in the mailbox's directory says who
// wrote it: Dovecot's index cache (dovecot.index.cache), where it keeps the
// header fields clients fetch, holds no sender address or Message-ID of it
// (deploy/dovecot/90-chatmail.conf, mail_never_cache_fields). The mail
// arrives and is fetched, downloaded and deleted the way Delta Chat does
// it; the second message arrives after Dovecot has seen a client fetch
// those fields, when it would cache them at delivery.
func TestIndexCacheForgetsExpungedMail(t *testing.T) {
	s := shared
	addr := newUsers(t, s, 1)[0]
	c, err := imapLoginClient(s, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}

	tag := newLocalpart()
	var secrets []string
	next := imap.UID(1)
	for i := range 2 {
		from := fmt.Sprintf("writer%d-%s@elsewhere.test", i, tag)
		msgID := fmt.Sprintf("msgid%d-%s@elsewhere.test", i, tag)
		secrets = append(secrets, from, msgID)
		lmtpDeliverFrom(t, s, addr, from, msgID)
		if err := c.Noop().Wait(); err != nil { // as IDLE would, learn of the new message
			t.Fatal(err)
		}
		msgs := prefetch(t, c, next)
		if len(msgs) != 1 || !contains(string(msgs[0].FindBodySection(&imap.FetchItemBodySection{Specifier: imap.PartSpecifierHeader, HeaderFields: deltaChatHeaders})), msgID) {
			t.Fatalf("prefetch of message %d: %d messages, want 1 with its Message-ID", i, len(msgs))
		}
		uid := imap.UIDSetNum(msgs[0].UID)
		next = msgs[0].UID + 1
		body, err := c.Fetch(uid, &imap.FetchOptions{Flags: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
		if err != nil || len(body) != 1 {
			t.Fatalf("FETCH BODY.PEEK[] of message %d: %v", i, err)
		}
	}

	dir := filepath.Join(s.Env["MAILBOXES_DIR"], addr)
	// A control: the search finds what is there, in the messages themselves.
	if got := filesHolding(t, dir, secrets); len(got) < len(secrets) {
		t.Fatalf("before the expunge, the senders and Message-IDs are found in only %v", got)
	}

	if err := c.Store(imap.UIDSet{imap.UIDRange{Start: 1}}, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
		t.Fatalf("STORE \\Deleted: %v", err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatalf("EXPUNGE: %v", err)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
	if files := storedFiles(t, s, addr); len(files) != 0 {
		t.Fatalf("after EXPUNGE: %v", files)
	}
	// The session ends after LOGOUT's reply; its last writes to the index
	// come with it.
	time.Sleep(500 * time.Millisecond)
	if got := filesHolding(t, dir, secrets); len(got) != 0 {
		t.Errorf("after the expunge, files in the mailbox still name the senders or Message-IDs: %v", got)
	}
}
