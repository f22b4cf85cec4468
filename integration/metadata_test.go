package integration

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"chatmail.dev/integration/stack"
)

// IMAP METADATA through the stack's real Dovecot, whose dict is
// chatmail-metadata (deploy/dovecot*/90-chatmail.conf): what Delta Chat
// reads after each login and the device tokens its mobile apps set.

// The server entries Delta Chat reads (core 2.62's update_metadata).
const (
	metaTurn              = "/shared/vendor/deltachat/turn"
	metaMaxSMTPRecipients = "/shared/vendor/deltachat/maxsmtprecipients"
	metaDeviceToken       = "/private/devicetoken"
)

// turnLifetime is the credential lifetime of the stack ([turn] lifetime,
// left at its default).
const turnLifetime = 120 * time.Hour

// requireMetadata fails t unless the stack runs chatmail-metadata: a
// daemon missing from a stack is a failure, never a skip.
func requireMetadata(t *testing.T, s *stack.Stack) {
	t.Helper()
	if s.Env["METADATA_SOCKET"] == "" {
		t.Fatal("the stack runs no chatmail-metadata (no METADATA_SOCKET in stack.env: was it built?)")
	}
}

// imapSession logs in over plain IMAP and logs out when t ends.
func imapSession(t *testing.T, s *stack.Stack, user, pass string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr("IMAP_PORT"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("IMAP LOGIN %s: %v", user, err)
	}
	return c
}

// getMetadata runs GETMETADATA on mailbox ("" for the server's entries)
// and returns the values, "" for entries that are NIL or missing.
func getMetadata(t *testing.T, c *imapclient.Client, mailbox string, entries ...string) map[string]string {
	t.Helper()
	data, err := c.GetMetadata(mailbox, entries, nil).Wait()
	if err != nil {
		t.Fatalf("GETMETADATA %q %v: %v", mailbox, entries, err)
	}
	out := map[string]string{}
	for _, e := range entries {
		if v := data.Entries[e]; v != nil {
			out[e] = string(*v)
		}
	}
	return out
}

// setMetadata runs SETMETADATA on mailbox with one entry; a nil value
// removes it.
func setMetadata(c *imapclient.Client, mailbox, entry string, value *string) error {
	var v *[]byte
	if value != nil {
		b := []byte(*value)
		v = &b
	}
	return c.SetMetadata(mailbox, map[string]*[]byte{entry: v}).Wait()
}

// turnCred is a TURN credential as Delta Chat reads it from
// /shared/vendor/deltachat/turn: host:port:username:password, split at the
// first three colons (core's create_ice_servers_from_metadata).
type turnCred struct {
	Host, Username, Password string
	Port                     int
}

func parseTurnValue(v string) (turnCred, error) {
	f := strings.SplitN(v, ":", 4)
	if len(f) != 4 {
		return turnCred{}, fmt.Errorf("TURN value %q: want host:port:username:password", v)
	}
	port, err := strconv.Atoi(f[1])
	if err != nil || port < 1 || port > 65535 {
		return turnCred{}, fmt.Errorf("TURN value %q: bad port", v)
	}
	return turnCred{Host: f[0], Port: port, Username: f[2], Password: f[3]}, nil
}

// expiry returns the Unix time the credential's username stands for.
func (c turnCred) expiry(t *testing.T) time.Time {
	t.Helper()
	n, err := strconv.ParseInt(c.Username, 10, 64)
	if err != nil || strconv.FormatInt(n, 10) != c.Username {
		t.Fatalf("TURN username %q is not a decimal Unix time", c.Username)
	}
	return time.Unix(n, 0)
}

// turnSecret reads the stack's TURN secret ([turn] secret_file): the
// file's text without its line end, as coturn's static-auth-secret would
// take it.
func turnSecret(t *testing.T, s *stack.Stack) []byte {
	t.Helper()
	b, err := os.ReadFile(s.Env["TURN_SECRET_FILE"])
	if err != nil {
		t.Fatalf("the TURN secret: %v", err)
	}
	return bytes.TrimSpace(b)
}

// turnPassword is the TURN REST password of username: base64 of
// HMAC-SHA1(secret, username), what coturn's --use-auth-secret and the
// reference relay accept.
func turnPassword(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// loginTurn creates an account (its first login) and returns it with the
// TURN credential GETMETADATA hands it.
func loginTurn(t *testing.T, s *stack.Stack) (string, turnCred) {
	t.Helper()
	addr := newAddr(s)
	c := imapSession(t, s, addr, goodPassword)
	v := getMetadata(t, c, "", metaTurn)[metaTurn]
	cred, err := parseTurnValue(v)
	if err != nil {
		t.Fatal(err)
	}
	return addr, cred
}

// After login GETMETADATA "" hands the account a TURN credential for the
// stack's TURN server, signed with the stack's secret and valid for the
// configured lifetime, and the recipient limit; a second login within the
// lifetime gets the same credential, another account another one. Dovecot
// advertises METADATA (Delta Chat asks only then).
func TestMetadataTurnCredential(t *testing.T) {
	s := shared
	requireMetadata(t, s)
	addr := newAddr(s)
	c := imapSession(t, s, addr, goodPassword)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !caps.Has(imap.Cap("METADATA")) {
		t.Errorf("Dovecot does not advertise METADATA: %v", caps)
	}
	before := time.Now()
	got := getMetadata(t, c, "", metaTurn, metaMaxSMTPRecipients, "/shared/vendor/deltachat/unknown")
	if n, err := strconv.Atoi(got[metaMaxSMTPRecipients]); err != nil || n < 1 {
		t.Errorf("maxsmtprecipients = %q, want a positive number", got[metaMaxSMTPRecipients])
	}
	if v := got["/shared/vendor/deltachat/unknown"]; v != "" {
		t.Errorf("an unknown entry has the value %q", v)
	}
	cred, err := parseTurnValue(got[metaTurn])
	if err != nil {
		t.Fatal(err)
	}
	if cred.Host != s.Env["TURN_HOST"] || strconv.Itoa(cred.Port) != s.Env["TURN_PORT"] {
		t.Errorf("TURN server %s:%d, want the stack's %s:%s", cred.Host, cred.Port, s.Env["TURN_HOST"], s.Env["TURN_PORT"])
	}
	// The expiry is drawn within the day of now+lifetime.
	exp := cred.expiry(t)
	if lo, hi := before.Add(turnLifetime-25*time.Hour), time.Now().Add(turnLifetime+25*time.Hour); exp.Before(lo) || exp.After(hi) {
		t.Errorf("TURN credential expires %v, want within a day of %v", exp, before.Add(turnLifetime))
	}
	if want := turnPassword(turnSecret(t, s), cred.Username); cred.Password != want {
		t.Errorf("TURN password %q, want HMAC-SHA1 of the username with the stack's secret, %q", cred.Password, want)
	}
	var owner string
	if err := db(t, s).QueryRow(context.Background(), `SELECT address FROM turn_credentials WHERE expiry = $1`, exp.Unix()).Scan(&owner); err != nil || owner != addr {
		t.Errorf("turn_credentials row of %s: %q, %v", cred.Username, owner, err)
	}

	again := imapSession(t, s, addr, goodPassword)
	if v := getMetadata(t, again, "", metaTurn)[metaTurn]; v != got[metaTurn] {
		t.Errorf("second login got TURN %q, want the same credential %q", v, got[metaTurn])
	}
	_, other := loginTurn(t, s)
	if other.Username == cred.Username {
		t.Errorf("two accounts got the same TURN username %s", cred.Username)
	}
}

// A device token set by one account is that account's alone: another
// account's GETMETADATA INBOX does not return it, and its own token does
// not show up for the first. Only the keys Delta Chat uses can be set,
// and SETMETADATA ... NIL removes the account's tokens.
func TestMetadataDeviceTokenPrivate(t *testing.T) {
	s := shared
	requireMetadata(t, s)
	alice, bob := newAddr(s), newAddr(s)
	ca := imapSession(t, s, alice, goodPassword)
	cb := imapSession(t, s, bob, goodPassword)
	tokA, tokB := "openpgp:"+rand.Text(), "openpgp:"+rand.Text()

	if err := setMetadata(ca, "INBOX", metaDeviceToken, &tokA); err != nil {
		t.Fatalf("SETMETADATA INBOX devicetoken: %v", err)
	}
	if got := getMetadata(t, ca, "INBOX", metaDeviceToken)[metaDeviceToken]; got != tokA {
		t.Errorf("Alice's devicetoken = %q, want %q", got, tokA)
	}
	if got := getMetadata(t, cb, "INBOX", metaDeviceToken)[metaDeviceToken]; got != "" {
		t.Errorf("Bob sees devicetoken %q, want none", got)
	}
	if err := setMetadata(cb, "INBOX", metaDeviceToken, &tokB); err != nil {
		t.Fatal(err)
	}
	if got := getMetadata(t, ca, "INBOX", metaDeviceToken)[metaDeviceToken]; got != tokA {
		t.Errorf("after Bob set his, Alice's devicetoken = %q, want only %q", got, tokA)
	}
	if got := getMetadata(t, cb, "INBOX", metaDeviceToken)[metaDeviceToken]; got != tokB {
		t.Errorf("Bob's devicetoken = %q, want %q", got, tokB)
	}
	if got := deviceTokens(t, s, alice); !slices.Equal(got, []string{tokA}) {
		t.Errorf("the store holds Alice's tokens %q, want %q", got, tokA)
	}

	// Nothing else is stored: Dovecot has no METADATA of its own. The
	// reply does not matter (OK: chatmail-metadata drops what it does not
	// store rather than fail the commit, which Dovecot would log as an
	// error at the client's will); that nothing is kept does. Nor is a
	// token that is not valid.
	const otherEntry = "/private/vendor/deltachat/other"
	other, badToken := "x", "openpgp:"+strings.Repeat("A", 6001)
	_ = setMetadata(ca, "INBOX", otherEntry, &other)
	_ = setMetadata(ca, "INBOX", metaDeviceToken, &badToken)
	if got, ok := getMetadata(t, ca, "INBOX", otherEntry)[otherEntry]; ok {
		t.Errorf("SETMETADATA of another entry stored %q", got)
	}
	if got := deviceTokens(t, s, alice); !slices.Equal(got, []string{tokA}) {
		t.Errorf("after another entry and a token too long, the store holds Alice's tokens %q, want %q", got, tokA)
	}
	if err := setMetadata(ca, "INBOX", metaDeviceToken, nil); err != nil {
		t.Fatalf("SETMETADATA devicetoken NIL: %v", err)
	}
	if got := getMetadata(t, ca, "INBOX", metaDeviceToken)[metaDeviceToken]; got != "" {
		t.Errorf("after NIL Alice's devicetoken = %q", got)
	}
	if got := deviceTokens(t, s, bob); !slices.Equal(got, []string{tokB}) {
		t.Errorf("Alice's NIL left Bob's tokens %q, want %q", got, tokB)
	}
}

// deviceTokens returns the tokens the store holds for addr.
func deviceTokens(t *testing.T, s *stack.Stack, addr string) []string {
	t.Helper()
	rows, err := db(t, s).Query(context.Background(), `SELECT token FROM device_tokens WHERE address = $1 ORDER BY id`, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var toks []string
	for rows.Next() {
		var tok string
		if err := rows.Scan(&tok); err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tok)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return toks
}
