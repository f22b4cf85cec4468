package integration

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"

	"chatmail.dev/integration/stack"
)

// storedFiles lists the messages stored for addr, in every folder.
func storedFiles(t *testing.T, s *stack.Stack, addr string) []string {
	t.Helper()
	var files []string
	root := filepath.Join(s.Env["MAILBOXES_DIR"], addr)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if dir := filepath.Base(filepath.Dir(p)); !d.IsDir() && (dir == "new" || dir == "cur") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return files
}

// lmtpDeliverPlain hands a message to Dovecot's LMTP socket, as Postfix does
// after the milter.
func lmtpDeliverPlain(t *testing.T, s *stack.Stack, to, body string) {
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
	fmt.Fprintf(w, "From: someone@elsewhere.test\r\nTo: %s\r\nSubject: [...]\r\n\r\n%s\r\n", to, body)
	if _, err := w.CloseWithLMTPResponse(); err != nil {
		t.Fatalf("LMTP delivery: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func wantNoPerm(t *testing.T, what string, err error) {
	t.Helper()
	var ie *imap.Error
	if !errors.As(err, &ie) || ie.Type != imap.StatusResponseTypeNo || ie.Code != imap.ResponseCodeNoPerm {
		t.Errorf("%s: %v, want NO [NOPERM]", what, err)
	}
}

// IMAP APPEND would store a message that never passed the milter (cleartext
// included) in one's own mailbox; COPY and MOVE into a mailbox need the same
// right. The stack refuses them (deploy/dovecot/chatmail-acl), and what
// Delta Chat does (fetch, flag, delete, expunge) still works, and so does
// delivery.
func TestIMAPAppendRefused(t *testing.T) {
	s := shared
	if s.Env["IMAP_APPEND"] != "refuse" {
		t.Fatalf("stack.env IMAP_APPEND = %q", s.Env["IMAP_APPEND"])
	}
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	c, err := imapLoginClient(s, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	clear := "From: " + addr + "\r\nTo: " + addr + "\r\nSubject: cleartext\r\n\r\nstored around the milter\r\n"
	for _, flags := range [][]imap.Flag{nil, {imap.FlagSeen}} {
		app := c.Append("INBOX", int64(len(clear)), &imap.AppendOptions{Flags: flags})
		if _, err := app.Write([]byte(clear)); err != nil {
			t.Fatal(err)
		}
		if err := app.Close(); err != nil {
			t.Fatal(err)
		}
		_, err := app.Wait()
		wantNoPerm(t, "APPEND", err)
	}
	if err := c.Create("Other", nil).Wait(); err != nil {
		t.Fatalf("CREATE: %v", err)
	}
	app := c.Append("Other", int64(len(clear)), nil)
	app.Write([]byte(clear))
	app.Close()
	_, err = app.Wait()
	wantNoPerm(t, "APPEND to another folder", err)
	if files := storedFiles(t, s, addr); len(files) != 0 {
		t.Fatalf("APPEND stored %v", files)
	}

	// Delivery still works, and so does everything Delta Chat does with it.
	lmtpDeliverPlain(t, s, addr, "-----BEGIN PGP MESSAGE-----")
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.SeqSetNum(1), &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{{}}}).Collect()
	if err != nil || len(msgs) != 1 || !strings.Contains(string(msgs[0].FindBodySection(&imap.FetchItemBodySection{})), "BEGIN PGP MESSAGE") {
		t.Fatalf("FETCH of a delivered message: %v %v", msgs, err)
	}
	uid := imap.UIDSetNum(msgs[0].UID)
	if err := c.Store(uid, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
		t.Fatalf("STORE \\Seen: %v", err)
	}
	_, err = c.Copy(uid, "Other").Wait()
	wantNoPerm(t, "COPY", err)
	_, err = c.Move(uid, "Other").Wait()
	wantNoPerm(t, "MOVE", err)
	if files := storedFiles(t, s, addr); len(files) != 1 {
		t.Fatalf("after COPY and MOVE: %v, want the one delivered message", files)
	}
	// Delta Chat deletes with STORE \Deleted and CLOSE (or EXPUNGE).
	if err := c.Store(uid, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatalf("STORE \\Deleted: %v", err)
	}
	if err := c.Expunge().Close(); err != nil {
		t.Fatalf("EXPUNGE: %v", err)
	}
	if files := storedFiles(t, s, addr); len(files) != 0 {
		t.Errorf("after EXPUNGE: %v", files)
	}
}
