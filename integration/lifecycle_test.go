package integration

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"

	"chatmail.dev/integration/stack"
)

// lmtpSession opens an LMTP transaction to Dovecot's socket for a message
// from another server to addr, as Postfix does after the milter: the
// recipient is already accepted or refused.
func lmtpSession(s *stack.Stack, addr string) (*smtp.Client, error) {
	conn, err := net.Dial("unix", s.Env["LMTP_SOCKET"])
	if err != nil {
		return nil, err
	}
	c := smtp.NewClientLMTP(conn)
	if err := c.Hello("localhost"); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Mail("someone@elsewhere.test", nil); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Rcpt(addr, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// lmtpRcpt asks Dovecot's LMTP whether it would deliver to addr, which it
// decides by a userdb lookup.
func lmtpRcpt(s *stack.Stack, addr string) error {
	c, err := lmtpSession(s, addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// After chatmail-admin delete returns, no delivery finds the account: the
// deletion's notification dropped doveauth's userdb cache, where the admin
// used to sleep through the cache's lifetime (2 s) instead. The lookups
// follow the delete at once, within that lifetime, so only the notification
// can make this pass.
func TestDeleteEndsDeliveryAtOnce(t *testing.T) {
	s := shared
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	// Fill the userdb cache.
	for range 3 {
		if err := lmtpRcpt(s, addr); err != nil {
			t.Fatalf("LMTP RCPT to a live account: %v", err)
		}
	}
	start := time.Now()
	if out := s.Admin(t, "delete", addr); !contains(out, "deleted") {
		t.Fatalf("delete said %q", out)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("delete took %v: it waits for something", d)
	}
	// The notification travels from PostgreSQL to doveauth after the
	// commit; a second is far more than that and far less than the cache.
	eventually(t, time.Second, func() error {
		err := lmtpRcpt(s, addr)
		if err == nil {
			return errors.New("LMTP accepts the deleted account")
		}
		if code, _ := smtpCode(err); code != 550 {
			return fmt.Errorf("LMTP RCPT: %v, want 550", err)
		}
		return nil
	})
	if _, err := os.Stat(filepath.Join(s.Env["MAILBOXES_DIR"], addr)); !os.IsNotExist(err) {
		t.Errorf("deleted account's mail is still there: %v", err)
	}
}

// Block, unblock and delete announce the change in their transaction; a
// failed operation announces nothing.
func TestAccountChangesNotified(t *testing.T) {
	s := shared
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	conn := db(t, s)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `LISTEN chatmail_account_changed`); err != nil {
		t.Fatal(err)
	}
	next := func() (string, error) {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			return "", err
		}
		return n.Payload, nil
	}
	for _, op := range []string{"block", "unblock", "delete"} {
		s.Admin(t, op, addr)
		if got, err := next(); got != addr || err != nil {
			t.Fatalf("%s: notified %q (%v), want %q", op, got, err, addr)
		}
	}
	// delete blocks first, then deletes: a second notification.
	if got, err := next(); got != addr || err != nil {
		t.Fatalf("delete: second notification %q (%v)", got, err)
	}
	f := strings.Fields(s.Env["ADMIN"])
	if out, err := exec.Command(f[0], append(f[1:], "block", newAddr(s))...).CombinedOutput(); err == nil {
		t.Fatalf("blocking no account succeeded: %s", out)
	}
	if got, err := next(); err == nil {
		t.Errorf("a failed block notified %q", got)
	}
}

// A deletion that stopped after the row (chatmail-admin killed before it
// removed the mail) leaves a tombstone with the mail pending: the address
// is refused, by the store and without looking at the mail directory, and
// deleting it again removes the mail and marks the tombstone.
func TestDeleteInterruptedBeforeMail(t *testing.T) {
	s := shared
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	if err := lmtpRcpt(s, addr); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(s.Env["MAILBOXES_DIR"], addr)
	if err := os.MkdirAll(filepath.Join(home, "new"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "new", "old-mail"), []byte("old mail"), 0o600); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(s.Env["STACK_DIR"], "etc", "tombstone.key"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(addr))
	tomb := m.Sum(nil)
	// What Store.Delete commits, and nothing after it.
	conn := db(t, s)
	ctx := context.Background()
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM accounts WHERE address = $1`, addr); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tombstones (address_hmac, mail_pending) VALUES ($1, true)`, tomb); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `SELECT pg_notify('chatmail_account_changed', $1)`, addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	wantLogin(t, s, addr, goodPassword, imap.ResponseCodeAuthenticationFailed)
	if countAccounts(t, s, addr) != 0 {
		t.Fatal("the address was registered again over its pending mail")
	}
	if _, err := os.Stat(filepath.Join(home, "new", "old-mail")); err != nil {
		t.Fatalf("the old mail went away by itself: %v", err)
	}
	if out := s.Admin(t, "delete", addr); !contains(out, "deleted") {
		t.Fatalf("finishing the delete said %q", out)
	}
	if _, err := os.Stat(home); !os.IsNotExist(err) {
		t.Errorf("the mail is still there: %v", err)
	}
	var pending bool
	if err := conn.QueryRow(ctx, `SELECT mail_pending FROM tombstones WHERE address_hmac = $1`, tomb).Scan(&pending); err != nil || pending {
		t.Errorf("tombstone mail_pending = %v (%v), want false", pending, err)
	}
	wantLogin(t, s, addr, goodPassword, imap.ResponseCodeAuthenticationFailed)
	// A third delete finds nothing to do.
	f := strings.Fields(s.Env["ADMIN"])
	if out, err := exec.Command(f[0], append(f[1:], "delete", addr)...).CombinedOutput(); err == nil || !contains(string(out), "no such account") {
		t.Errorf("deleting a finished deletion: %v %s", err, out)
	}
}

// TestSweepRemovesLateMail: mail written for a deleted account after its
// deletion (a delivery already past its lookup, a missed notification) is
// removed by chatmail-admin sweep, and nothing else is.
func TestSweepRemovesLateMail(t *testing.T) {
	s := shared
	gone, kept := newAddr(s), newAddr(s)
	wantLogin(t, s, gone, goodPassword, "")
	wantLogin(t, s, kept, goodPassword, "")
	if out := s.Admin(t, "delete", gone); !contains(out, "deleted") {
		t.Fatalf("delete said %q", out)
	}
	// What a late delivery leaves: a new mail directory.
	for _, a := range []string{gone, kept} {
		dir := filepath.Join(s.Env["MAILBOXES_DIR"], a, "new")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "late"), []byte("late mail"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out := s.Admin(t, "sweep"); !contains(out, "swept") {
		t.Fatalf("sweep said %q", out)
	}
	if _, err := os.Stat(filepath.Join(s.Env["MAILBOXES_DIR"], gone)); !os.IsNotExist(err) {
		t.Errorf("the deleted account's late mail is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.Env["MAILBOXES_DIR"], kept, "new", "late")); err != nil {
		t.Errorf("a live account's mail went: %v", err)
	}
}
