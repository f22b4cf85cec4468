package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"chatmail.dev/integration/stack"
)

func TestIMAPLoginCreatesAccount(t *testing.T) {
	s := shared
	addr := newAddr(s)
	if n := countAccounts(t, s, addr); n != 0 {
		t.Fatalf("account exists before its first login")
	}
	wantLogin(t, s, addr, goodPassword, "")
	wantLogin(t, s, addr, goodPassword, "")
	wantLogin(t, s, addr, "another-password", imap.ResponseCodeAuthenticationFailed)

	var hash string
	var lastLogin *time.Time
	err := db(t, s).QueryRow(context.Background(), `SELECT password_hash, last_login FROM accounts WHERE address = $1`, addr).Scan(&hash, &lastLogin)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(hash, "{SHA512-CRYPT}$6$") || strings.Contains(hash, goodPassword) {
		t.Errorf("stored hash %q: want a {SHA512-CRYPT} hash without the password", hash)
	}
	// Dovecot's last_login plugin writes through the dict after login.
	eventually(t, 5*time.Second, func() error {
		err := db(t, s).QueryRow(context.Background(), `SELECT last_login FROM accounts WHERE address = $1`, addr).Scan(&lastLogin)
		if err == nil && (lastLogin == nil || lastLogin.Format(time.DateOnly) != time.Now().UTC().Format(time.DateOnly)) {
			err = fmt.Errorf("last_login = %v, want today", lastLogin)
		}
		return err
	})
}

func TestSMTPAuthFirstThenIMAP(t *testing.T) {
	s := shared
	addr := newAddr(s)
	if err := smtpAuth(s, addr, goodPassword); err != nil {
		t.Fatalf("first SMTP AUTH: %v", err)
	}
	if countAccounts(t, s, addr) != 1 {
		t.Fatal("SMTP AUTH did not create the account")
	}
	wantLogin(t, s, addr, goodPassword, "")
	wantLogin(t, s, addr, "another-password", imap.ResponseCodeAuthenticationFailed)
	var se *smtp.SMTPError
	if err := smtpAuth(s, addr, "another-password"); !errors.As(err, &se) || se.Code != 535 {
		t.Errorf("SMTP AUTH with a wrong password: %v, want 535", err)
	}
}

func TestConcurrentFirstLogins(t *testing.T) {
	s := shared
	addr := newAddr(s)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				errs <- imapLogin(s, addr, goodPassword)
			} else {
				errs <- smtpAuth(s, addr, goodPassword)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent first login: %v", err)
		}
	}
	if n := countAccounts(t, s, addr); n != 1 {
		t.Errorf("%d accounts, want 1", n)
	}
}

func TestCreationRules(t *testing.T) {
	s := shared
	for _, c := range []struct {
		name, user, pass string
	}{
		{"foreign domain", newLocalpart() + "@elsewhere.test", goodPassword},
		{"too short", "abcdefgh@" + s.Domain, goodPassword},
		{"too long", "abcdefghij@" + s.Domain, goodPassword},
		{"plus sign", "abcd+efgh@" + s.Domain, goodPassword},
		{"exclamation", "abcd!efgh@" + s.Domain, goodPassword},
		{"short password", newAddr(s), "12345678"},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantLogin(t, s, c.user, c.pass, imap.ResponseCodeAuthenticationFailed)
			if n := countAccounts(t, s, strings.ToLower(c.user)); n != 0 {
				t.Errorf("account %s was created", c.user)
			}
		})
	}
	// Dovecot lower-cases user names (auth_username_format = %Lu), so an
	// upper-case login reaches the same, normalized account.
	addr := newAddr(s)
	wantLogin(t, s, strings.ToUpper(addr[:9])+addr[9:], goodPassword, "")
	wantLogin(t, s, addr, goodPassword, "")
	if countAccounts(t, s, addr) != 1 {
		t.Error("upper-case login did not create the normalized account")
	}
}

func TestBlockedAccount(t *testing.T) {
	s := shared
	addr, peer := newAddr(s), newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	wantLogin(t, s, peer, goodPassword, "")

	// Sessions opened before the block.
	imapSession, err := imapLoginClient(s, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer imapSession.Close()
	smtpSession, err := smtp.DialStartTLS(s.Addr("SUBMISSION_PORT"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer smtpSession.Close()
	if err := smtpSession.Auth(sasl.NewPlainClient("", addr, goodPassword)); err != nil {
		t.Fatal(err)
	}

	if out := s.Admin(t, "block", addr); !contains(out, "blocked") {
		t.Errorf("admin block said %q", out)
	}
	if err := imapLogin(s, addr, goodPassword); err == nil {
		t.Error("blocked account logged in over IMAP")
	}
	if err := smtpAuth(s, addr, goodPassword); err == nil {
		t.Error("blocked account authenticated over SMTP")
	}
	if err := imapSession.Noop().Wait(); err == nil {
		t.Error("the blocked account's open IMAP session still works")
	}
	err = smtpSend(smtpSession, addr, peer, fixture(t, "enc-v6.eml", addr, peer))
	if code, text := smtpCode(err); code != 554 || !contains(text, "blocked") {
		t.Errorf("sending over the blocked account's open SMTP session: %v, want 554 saying it is blocked", err)
	}

	s.Admin(t, "unblock", addr)
	wantLogin(t, s, addr, goodPassword, "")
	if err := submit(s, addr, goodPassword, peer, fixture(t, "enc-v6.eml", addr, peer)); err != nil {
		t.Errorf("unblocked account cannot send: %v", err)
	}

	s.Admin(t, "delete", addr)
	if countAccounts(t, s, addr) != 0 {
		t.Error("deleted account still has a row")
	}
	if _, err := os.Stat(filepath.Join(s.Env["MAILBOXES_DIR"], addr)); !os.IsNotExist(err) {
		t.Errorf("deleted account's mail is still there: %v", err)
	}
}

func TestClosedRegistration(t *testing.T) {
	// A second stack beside the shared one, as an admin would run two.
	closed := stack.Start(t, stack.Registration("closed"), stack.Domain("closed.test"))
	addr := newAddr(closed)
	wantLogin(t, closed, addr, goodPassword, imap.ResponseCodeAuthenticationFailed)
	if countAccounts(t, closed, addr) != 0 {
		t.Error("closed registration created an account")
	}
	// The shared stack is unaffected.
	wantLogin(t, shared, newAddr(shared), goodPassword, "")
}

// whilePostgresDown runs down with the shared stack's PostgreSQL stopped, and
// then checks that logins recover by themselves: existing was created
// before, fresh was first tried while PostgreSQL was down.
func whilePostgresDown(t *testing.T, down func(existing, fresh string)) {
	s := shared
	existing, fresh := newAddr(s), newAddr(s)
	wantLogin(t, s, existing, goodPassword, "")

	s.Run(t, "stop-postgres")
	restarted := false
	defer func() {
		if !restarted {
			s.Run(t, "start-postgres")
		}
	}()
	down(existing, fresh)

	s.Run(t, "start-postgres")
	restarted = true
	eventually(t, 20*time.Second, func() error { return imapLogin(s, existing, goodPassword) })
	wantLogin(t, s, fresh, goodPassword, "")
	wantLogin(t, s, existing, "another-password", imap.ResponseCodeAuthenticationFailed)
	if countAccounts(t, s, fresh) != 1 {
		t.Error("account not created after PostgreSQL came back")
	}
}

func TestPostgresDown(t *testing.T) {
	whilePostgresDown(t, func(existing, fresh string) {
		for _, user := range []string{existing, fresh, existing} {
			err := imapLogin(shared, user, goodPassword)
			if code := imapCode(t, err); code != imap.ResponseCodeUnavailable {
				t.Errorf("login of %s with PostgreSQL down: %v, want a temporary failure (UNAVAILABLE)", user, err)
			}
		}
		// Postfix's Dovecot SASL client turns every FAIL into 535, temporary
		// or not (Postfix 3.7 xsasl_dovecot); the login must fail all the same.
		if err := smtpAuth(shared, fresh, goodPassword); err == nil {
			t.Error("SMTP AUTH succeeded with PostgreSQL down")
		}
	})
}

// doveauth started while PostgreSQL is down answers "try again later" and
// becomes fully useful once PostgreSQL is up, without a restart.
func TestDoveauthStartsWithoutPostgres(t *testing.T) {
	whilePostgresDown(t, func(existing, fresh string) {
		shared.Run(t, "restart", "doveauth")
		wantLogin(t, shared, existing, goodPassword, imap.ResponseCodeUnavailable)
		wantLogin(t, shared, fresh, goodPassword, imap.ResponseCodeUnavailable)
	})
}

// A database migrated by a newer release is not used: chatmail-admin
// refuses with a clear error, doveauth answers "try again later" (never a
// wrong answer) and serves again once the schema is one it knows.
func TestSchemaNewer(t *testing.T) {
	existing := newUsers(t, shared, 1)[0]
	conn := db(t, shared)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version) VALUES (999999)`); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if _, err := conn.Exec(ctx, `DELETE FROM schema_migrations WHERE version = 999999`); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restore)
	f := strings.Fields(shared.Env["ADMIN"])
	out, err := exec.Command(f[0], append(f[1:], "list")...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "newer") {
		t.Errorf("chatmail-admin on a newer schema: %v\n%s", err, out)
	}
	before := strings.Count(shared.Log(t, "doveauth.log"), "account store unusable")
	shared.Run(t, "restart", "doveauth")
	// Refused for the schema, not merely not migrated yet.
	eventually(t, 20*time.Second, func() error {
		if strings.Count(shared.Log(t, "doveauth.log"), "account store unusable") > before {
			return nil
		}
		return errors.New(`doveauth logged no "account store unusable"`)
	})
	wantLogin(t, shared, existing, goodPassword, imap.ResponseCodeUnavailable)
	restore()
	eventually(t, 20*time.Second, func() error { return imapLogin(shared, existing, goodPassword) })
}

func TestLMTPDeliveryAndQuota(t *testing.T) {
	s := shared
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")

	lmtpDeliverPlain(t, s, addr, strings.Repeat("x", 5000))

	files, err := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], addr, "new", "*"))
	if err != nil || len(files) != 1 {
		t.Fatalf("Maildir new/ holds %v (%v), want one message", files, err)
	}
	fi, err := os.Stat(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var storage, messages *int64
	eventually(t, 5*time.Second, func() error {
		err := db(t, s).QueryRow(context.Background(), `SELECT storage_bytes, message_count FROM accounts WHERE address = $1`, addr).Scan(&storage, &messages)
		// Dovecot 2.4's quota count sends virtual sizes (CRLF lines),
		// the Maildir file name's W=; 2.3's dict quota the file's size.
		want := fi.Size()
		if w := regexp.MustCompile(`,W=(\d+)`).FindStringSubmatch(filepath.Base(files[0])); w != nil && !strings.HasPrefix(s.Env["DOVECOT_VERSION"], "2.3") {
			want, _ = strconv.ParseInt(w[1], 10, 64)
		}
		if err == nil && (storage == nil || *storage != want) {
			err = fmt.Errorf("storage_bytes = %v, want %d", storage, want)
		}
		return err
	})
	if messages == nil || *messages != 1 {
		t.Errorf("message_count = %v, want 1", messages)
	}
	var received *int64
	if err := db(t, s).QueryRow(context.Background(), `SELECT received_messages FROM accounts WHERE address = $1`, addr).Scan(&received); err != nil {
		t.Fatal(err)
	}
	if received == nil || *received != 1 {
		t.Errorf("received_messages = %v, want 1 delivery counted", received)
	}

	// IMAP's GETQUOTAROOT is answered from the same dict.
	ic, err := imapLoginClient(s, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ic.Close()
	data, err := ic.GetQuotaRoot("INBOX").Wait()
	if err != nil {
		t.Fatal(err)
	}
	var used int64 = -1
	for _, q := range data {
		if r, ok := q.Resources[imap.QuotaResourceStorage]; ok {
			used = r.Usage
		}
	}
	if want := (fi.Size() + 1023) / 1024; used != want && used != fi.Size()/1024 {
		t.Errorf("GETQUOTAROOT storage usage %d KiB, want about %d", used, want)
	}
}

func TestMetricsAndNoLog(t *testing.T) {
	s := shared
	addr := newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	if !contains(s.Log(t, "doveauth.log"), addr) {
		t.Error("with No-Log off, account creation is not logged")
	}

	if out := s.Admin(t, "nolog", "on"); !contains(out, "nolog on") {
		t.Fatalf("nolog on said %q", out)
	}
	defer s.Admin(t, "nolog", "off")
	time.Sleep(1500 * time.Millisecond) // daemons check the switch every second
	secret := newAddr(s)
	wantLogin(t, s, secret, goodPassword, "")
	wantLogin(t, s, "abc@"+s.Domain, goodPassword, imap.ResponseCodeAuthenticationFailed)
	if log := s.Log(t, "doveauth.log"); contains(log, secret) || contains(log, "abc@") {
		t.Error("under No-Log, doveauth's log names a user")
	}

	resp, err := http.Get("http://" + s.Env["DOVEAUTH_METRICS"] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := string(b)
	for _, want := range []string{
		"chatmail_doveauth_accounts_created_total ",
		`chatmail_doveauth_lookups_total{kind="passdb",result="created"}`,
		`chatmail_doveauth_creation_rejections_total{reason="bad_localpart"}`,
		"chatmail_doveauth_lookup_duration_seconds_bucket",
	} {
		if !contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if contains(m, s.Domain) {
		t.Error("metrics name a user or domain")
	}
}

// imapLoginClient returns a logged-in IMAP client.
func imapLoginClient(s *stack.Stack, addr string) (*imapclient.Client, error) {
	c, err := imapclient.DialInsecure(s.Addr("IMAP_PORT"), nil)
	if err != nil {
		return nil, err
	}
	if err := c.Login(addr, goodPassword).Wait(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// doveauthMetric returns the value of one series of doveauth's metrics.
func doveauthMetric(t *testing.T, s *stack.Stack, series string) float64 {
	t.Helper()
	v, ok := scrapeMetrics(t, s.Env["DOVEAUTH_METRICS"], series)[series]
	if !ok {
		t.Fatalf("no metric %s", series)
	}
	return v
}

// imapAuthPlain logs in with AUTHENTICATE PLAIN (SASL-IR), which carries
// longer passwords to doveauth than LOGIN does.
func imapAuthPlain(s *stack.Stack, user, pass string) error {
	c, err := imapclient.DialInsecure(s.Addr("IMAP_PORT"), nil)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Authenticate(sasl.NewPlainClient("", user, pass))
}

// An overlong password fails at once, for a new address (nothing created)
// and for an existing account, whose hash Dovecot never gets to compare it
// with: doveauth answers "not found" without hashing.
func TestPasswordMaxLength(t *testing.T) {
	s := shared
	existing, fresh := newAddr(s), newAddr(s)
	wantLogin(t, s, existing, goodPassword, "")
	const series = `chatmail_doveauth_creation_rejections_total{reason="long_password"}`
	before := doveauthMetric(t, s, series)
	long := strings.Repeat("p", 3000) // as long as Dovecot passes on
	for _, user := range []string{existing, fresh} {
		start := time.Now()
		err := imapAuthPlain(s, user, long)
		if code := imapCode(t, err); code != imap.ResponseCodeAuthenticationFailed {
			t.Errorf("AUTHENTICATE %s with a 3000-byte password: %v, want AUTHENTICATIONFAILED", user, err)
		}
		// 60 KB by LOGIN, a literal: refused by Dovecot or by doveauth, fast.
		if err := imapLogin(s, user, strings.Repeat("p", 60_000)); err == nil {
			t.Errorf("LOGIN %s with a 60 KB password succeeded", user)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: refusing long passwords took %v", user, d)
		}
	}
	if after := doveauthMetric(t, s, series); after < before+2 {
		t.Errorf("doveauth refused %v long passwords, want 2 (one per account): they reached Dovecot's hashing instead", after-before)
	}
	if n := countAccounts(t, s, fresh); n != 0 {
		t.Error("a login with an overlong password created an account")
	}
	// The longest password allowed still creates an account and logs in.
	edge := newAddr(s)
	wantLogin(t, s, edge, strings.Repeat("q", 128), "")
	wantLogin(t, s, edge, strings.Repeat("q", 128), "")
	if err := smtpAuth(s, existing, long); err == nil {
		t.Error("SMTP AUTH with a 3000-byte password succeeded")
	}
}

func TestLocalpartCharacters(t *testing.T) {
	s := shared
	for _, lp := range []string{".........", "abcd.efgh", "abcd_efgh", "abcd-efgh", "-abcdefgh"} {
		user := lp + "@" + s.Domain
		wantLogin(t, s, user, goodPassword, imap.ResponseCodeAuthenticationFailed)
		if err := smtpAuth(s, user, goodPassword); err == nil {
			t.Errorf("SMTP AUTH %s succeeded", user)
		}
		if n := countAccounts(t, s, user); n != 0 {
			t.Errorf("account %s was created", user)
		}
	}
}

func TestCreationRateLimit(t *testing.T) {
	limited := func(a *[]string) { *a = append(*a, "--create-burst", "3", "--create-per-minute", "1") }
	s := stack.Start(t, limited)
	var made []string
	for range 3 {
		addr := newAddr(s)
		wantLogin(t, s, addr, goodPassword, "")
		made = append(made, addr)
	}
	over := newAddr(s)
	wantLogin(t, s, over, goodPassword, imap.ResponseCodeUnavailable)
	if err := smtpAuth(s, over, goodPassword); err == nil {
		t.Error("SMTP AUTH over the creation limit succeeded")
	}
	if n := countAccounts(t, s, over); n != 0 {
		t.Error("an account was created over the limit")
	}
	// Existing accounts log in as before.
	for _, addr := range made {
		wantLogin(t, s, addr, goodPassword, "")
	}
}

// A deleted account leaves a tombstone: its address cannot be registered
// again, and the database holds a keyed hash of it, never the address.
func TestDeletedAddressStaysDead(t *testing.T) {
	s := shared
	addr, abuser := newAddr(s), newAddr(s)
	wantLogin(t, s, addr, goodPassword, "")
	wantLogin(t, s, abuser, goodPassword, "")
	if out := s.Admin(t, "delete", addr); !contains(out, "deleted") {
		t.Fatalf("delete said %q", out)
	}
	wantLogin(t, s, addr, goodPassword, imap.ResponseCodeAuthenticationFailed)
	wantLogin(t, s, strings.ToUpper(addr), "another-password", imap.ResponseCodeAuthenticationFailed)
	if err := smtpAuth(s, addr, goodPassword); err == nil {
		t.Error("SMTP AUTH re-registered a deleted address")
	}
	// The abuser is blocked, then deleted; registering again fails too.
	s.Admin(t, "block", abuser)
	s.Admin(t, "delete", abuser)
	wantLogin(t, s, abuser, goodPassword, imap.ResponseCodeAuthenticationFailed)
	if err := smtpAuth(s, abuser, goodPassword); err == nil {
		t.Error("SMTP AUTH re-registered a deleted abuser")
	}
	for _, a := range []string{addr, abuser} {
		if n := countAccounts(t, s, a); n != 0 {
			t.Errorf("%s was registered again", a)
		}
	}
	var rows, naming, badLen int
	err := db(t, s).QueryRow(context.Background(), `SELECT count(*),
		count(*) FILTER (WHERE position(convert_to($1, 'UTF8') IN address_hmac) > 0 OR position(convert_to($2, 'UTF8') IN address_hmac) > 0),
		count(*) FILTER (WHERE length(address_hmac) <> 32) FROM tombstones`, addr, abuser).Scan(&rows, &naming, &badLen)
	if err != nil {
		t.Fatal(err)
	}
	if rows < 2 || naming != 0 || badLen != 0 {
		t.Errorf("tombstones: %d rows, %d naming the address, %d not 32 bytes", rows, naming, badLen)
	}
	// Other addresses are unaffected.
	wantLogin(t, s, newAddr(s), goodPassword, "")
}

// Logins racing a deletion never bring the account back: creation and
// deletion of one address are ordered by PostgreSQL.
func TestDeleteRacesLogins(t *testing.T) {
	s := shared
	for range 2 {
		addr := newAddr(s)
		wantLogin(t, s, addr, goodPassword, "")
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					imapLogin(s, addr, goodPassword)
				}
			})
		}
		s.Admin(t, "delete", addr)
		close(stop)
		wg.Wait()
		if n := countAccounts(t, s, addr); n != 0 {
			t.Fatalf("a login racing the deletion registered the address again")
		}
		wantLogin(t, s, addr, goodPassword, imap.ResponseCodeAuthenticationFailed)
	}
}
