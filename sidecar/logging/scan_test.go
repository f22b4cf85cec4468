package logging_test

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/logging/logtest"
)

type valuer string

func (v valuer) LogValue() slog.Value { return slog.StringValue(string(v)) }

type peer struct{ Who string }

// Under No-Log an identity that is not in an identity attribute is masked
// too, wherever it is: the message, a plain string, an error (PostgreSQL's
// included), a panic value, a struct, a group, a LogValuer, the logger's
// With attributes. With No-Log off it is all written as it is.
func TestNoLogScansEverything(t *testing.T) {
	pgErr := &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: `duplicate key value violates unique constraint "accounts_pkey"`,
		Detail: "Key (address)=(carol@x.test) already exists.", ConstraintName: "accounts_pkey"}
	record := func(log *slog.Logger) {
		log = log.With("peer", "198.51.100.4", slog.Group("g", "to", "dave@x.test"))
		log.Warn("cannot deliver to erin@x.test", "err", fmt.Errorf("lookup of %q from [2001:db8::5]:25: %w", "frank@x.test", errors.New("refused")))
		log.Error("insert failed", "err", pgErr)
		log.Error("panic while serving a connection", "panic", fmt.Errorf("index out of range for <m1.2@mail.x.test> from ::ffff:192.0.2.8"))
		log.Warn("odd", "who", peer{Who: "grace@x.test"}, "remote", net.ParseIP("203.0.113.7"), "v", valuer("heidi@x.test"),
			"raw", []byte("ivan@x.test"), slog.Group("h", "x", "judy@x.test"), "mapped", "fe80::1")
	}
	ids := []string{"198.51.100.4", "dave@x.test", "erin@x.test", "frank@x.test", "2001:db8::5", "carol@x.test",
		"<m1.2@mail.x.test>", "192.0.2.8", "grace@x.test", "203.0.113.7", "heidi@x.test", "ivan@x.test", "judy@x.test", "fe80::1"}

	log, nolog, buf := logtest.New(true)
	record(log)
	out := buf.String()
	if leaks := logtest.Leaks(out, ids...); len(leaks) > 0 {
		t.Errorf("No-Log wrote %q:\n%s", leaks, out)
	}
	if bad := logtest.Shapes(out); len(bad) > 0 {
		t.Errorf("No-Log wrote the shape of an identity:\n%s", strings.Join(bad, "\n"))
	}
	for _, keep := range []string{"cannot deliver to -", "refused", "SQLSTATE 23505", "accounts_pkey", ":25", "index out of range", "insert failed"} {
		if !strings.Contains(out, keep) {
			t.Errorf("No-Log lost %q:\n%s", keep, out)
		}
	}

	nolog.Set(false)
	buf2 := &logtest.Buffer{}
	record(logging.New(buf2, slog.LevelDebug, nolog))
	// PostgreSQL's DETAIL is not in the error's text, in any mode; the
	// rest is written as it is.
	if leaks := logtest.Leaks(buf2.String(), ids...); len(leaks) != len(ids)-1 || slices.Contains(leaks, "carol@x.test") {
		t.Errorf("No-Log off wrote %q of %q:\n%s", leaks, ids, buf2.String())
	}
}

func TestMask(t *testing.T) {
	for in, want := range map[string]string{
		"alice@chat.example":                        "-",
		"{Who:alice@chat.example}":                  "{Who:-}",
		`key "shared/passdb/x\"bob@chat.example"`:   `key "shared/passdb/x\"-"`,
		"Message-ID <a.b-c@host.example>":           "Message-ID <->",
		"dial tcp 127.0.0.1:5432: refused":          "dial tcp -:5432: refused",
		"[2001:db8::1]:25 and ::1 and fe80::1%eth0": "[-]:25 and - and -%eth0",
		"1:2:3:4:5:6:7:8":                           "-",
		"::ffff:192.0.2.1":                          "-:-",
		// Kept: what only looks a little like an identity.
		"/root/go/pkg/mod/github.com/emersion/go-milter@v0.5.0/session.go:267": "/root/go/pkg/mod/github.com/emersion/go-milter@v0.5.0/session.go:267",
		"write unix @->/run/doveauth.sock: broken pipe":                        "write unix @->/run/doveauth.sock: broken pipe",
		"go1.26.8 v5.13.0 10:20:30 0xc000123456 SQLSTATE 23505 1.5s":           "go1.26.8 v5.13.0 10:20:30 0xc000123456 SQLSTATE 23505 1.5s",
		"user=chatmail database=chatmail":                                      "user=chatmail database=chatmail",
	} {
		if got := logging.Mask(in); got != want {
			t.Errorf("Mask(%q) = %q, want %q", in, got, want)
		}
	}
}
