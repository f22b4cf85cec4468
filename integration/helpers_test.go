package integration

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/jackc/pgx/v5"

	"chatmail.dev/integration/chatflow"
	"chatmail.dev/integration/stack"
)

// shared is the stack most tests use; tests that need their own start one.
var shared *stack.Stack

func TestMain(m *testing.M) {
	var err error
	shared, err = stack.Up()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration: cannot start the test stack:", err)
		os.Exit(1)
	}
	// Which servers this run tests (STACK_DEBIAN): CI runs the suite twice.
	fmt.Fprintf(os.Stderr, "integration: Debian %s stack: Postfix %s, Dovecot %s\n",
		shared.Env["DEBIAN"], shared.Env["POSTFIX_VERSION"], shared.Env["DOVECOT_VERSION"])
	code := m.Run()
	if err := shared.Down(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		code = 1
	}
	if err := stack.RemoveBinaries(); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		code = 1
	}
	os.Exit(code)
}

// newLocalpart returns a fresh 9-character local part, as Delta Chat makes.
func newLocalpart() string { return chatflow.NewLocalpart() }

func newAddr(s *stack.Stack) string { return newLocalpart() + "@" + s.Domain }

const goodPassword = "correct-horse-battery"

// imapLogin logs in over plain IMAP and logs out again.
func imapLogin(s *stack.Stack, user, pass string) error {
	c, err := imapclient.DialInsecure(s.Addr("IMAP_PORT"), nil)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		return err
	}
	return c.Logout().Wait()
}

// imapCode returns the response code of an IMAP error, or "" for success.
func imapCode(t *testing.T, err error) imap.ResponseCode {
	t.Helper()
	if err == nil {
		return ""
	}
	var ie *imap.Error
	if !errors.As(err, &ie) {
		t.Fatalf("not an IMAP status response: %v", err)
	}
	return ie.Code
}

func wantLogin(t *testing.T, s *stack.Stack, user, pass string, want imap.ResponseCode) {
	t.Helper()
	if got := imapCode(t, imapLogin(s, user, pass)); got != want {
		t.Errorf("IMAP LOGIN %s: got code %q, want %q", user, got, want)
	}
}

// smtpAuth authenticates on the submission port after STARTTLS.
func smtpAuth(s *stack.Stack, user, pass string) error {
	c, err := smtp.DialStartTLS(s.Addr("SUBMISSION_PORT"), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		return err
	}
	return c.Quit()
}

// db connects to the stack's PostgreSQL.
func db(t *testing.T, s *stack.Stack) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.Env["PG_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func countAccounts(t *testing.T, s *stack.Stack, addr string) int {
	t.Helper()
	var n int
	if err := db(t, s).QueryRow(context.Background(), `SELECT count(*) FROM accounts WHERE address = $1`, addr).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// eventually retries f until it returns nil or the deadline passes.
func eventually(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("still failing after %v: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func contains(haystack, needle string) bool { return strings.Contains(haystack, needle) }

// scrapeMetrics reads a daemon's Prometheus listener at addr and returns
// the series whose names start with prefix, by name with labels.
func scrapeMetrics(t *testing.T, addr, prefix string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]float64{}
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, prefix) || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	return m
}
