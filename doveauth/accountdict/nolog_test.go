package accountdict

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/logging/logtest"
	"chatmail.dev/sidecar/socketmap"
)

// Who and what the No-Log test uses; none of it may be in a No-Log log,
// and no password and no address in what Dovecot and Postfix log of
// doveauth's answers (their failure reasons), in any mode.
const (
	nlUser     = "abcdefghi@chat.test" // an account
	nlPass     = "Corr3ct-Horse-Battery"
	nlWrong    = "Wr0ng-Battery-Staple"
	nlBlocked  = "blockedxx@chat.test"
	nlNew      = "zyxwvutsr@chat.test" // an account made by its first login
	nlNewPass  = "Fre5h-Account-Secret"
	nlRefused  = "qponmlkji@chat.test" // a first login refused
	nlShort    = "Sh0rt-pw"
	nlKeyPass  = "Pr1v-Key-Secret"
	nlDBHost   = "127.0.0.1"
	nlPanicIP  = "192.0.2.44"
	nlAbsentIP = "198.51.100.3"
)

var nlLong = strings.Repeat("L0ng-", 30)

// panicStore is a store with a bug: Get panics with a value that quotes
// its input and a peer, as a careless panic would.
type panicStore struct{ *memStore }

func (p panicStore) Get(ctx context.Context, addr string) (*accounts.Account, error) {
	panic(fmt.Sprintf("bug: row for %s (client %s)", addr, nlPanicIP))
}

func (p panicStore) Credentials(ctx context.Context, addr string) (accounts.Credentials, error) {
	panic(fmt.Sprintf("bug: credentials of %s (client %s)", addr, nlPanicIP))
}

type panics struct{ n atomic.Int64 }

func (p *panics) Inc() { p.n.Add(1) }

// serveDict serves svc on a dict socket and a socketmap socket, with log.
func serveDict(t *testing.T, svc *Service, p *panics) (dictSock, mapSock string) {
	t.Helper()
	dir := t.TempDir()
	dictSock, mapSock = filepath.Join(dir, "d.sock"), filepath.Join(dir, "m.sock")
	dl, err := net.Listen("unix", dictSock)
	if err != nil {
		t.Fatal(err)
	}
	ml, err := net.Listen("unix", mapSock)
	if err != nil {
		t.Fatal(err)
	}
	ds := &dict.Server{Handler: svc, Log: svc.Log, Panics: p, IdleTimeout: time.Minute, RequestTimeout: 5 * time.Second}
	ms := &socketmap.Server{Handler: svc.SenderAccess, Log: svc.Log, Panics: p, IdleTimeout: time.Minute, RequestTimeout: 5 * time.Second}
	done := make(chan error, 2)
	go func() { done <- ds.Serve(dl) }()
	go func() { done <- ms.Serve(ml) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := ds.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		if err := ms.Shutdown(ctx); err != nil {
			t.Error(err)
		}
		for range 2 {
			if err := <-done; !errors.Is(err, dict.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		}
	})
	return dictSock, mapSock
}

// talk sends req on a new connection to sock and reads n lines (or up to
// the end of the connection when n < 0).
func talk(t *testing.T, sock, req string, n int) []string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var lines []string
	for n < 0 || len(lines) < n {
		l, err := r.ReadString('\n')
		if err != nil {
			if n < 0 && errors.Is(err, io.EOF) {
				return lines
			}
			t.Fatalf("%q: after %q: %v", req, lines, err)
		}
		lines = append(lines, strings.TrimSuffix(l, "\n"))
	}
	return lines
}

// ask sends one socketmap request on a new connection to sock and returns
// the reply, "" if the connection ended without one.
func ask(t *testing.T, sock, req string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(socketmap.AppendNetstring(nil, req)); err != nil {
		t.Fatal(err)
	}
	reply, err := socketmap.ReadNetstring(bufio.NewReader(c), socketmap.MaxRequest)
	if err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("%q: %v", req, err)
	}
	return reply
}

func passdbKey(pass, user string) string {
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `'`, `\'`)
	return "shared/passdb/" + esc.Replace(pass) + `"` + esc.Replace(user)
}

// TestNoLogNamesNoOne drives doveauth's dict and socketmap servers through
// what happens in a day (logins with right, wrong, short and long
// passwords, first logins refused and accepted, blocked and unknown users,
// keys doveauth does not serve, PostgreSQL down, a handler that panics)
// and checks what reaches the log: under No-Log no address, IP or
// password; with No-Log off the users, but never a password. Dovecot and
// Postfix log doveauth's failure replies, so those name no one and carry
// no password in either mode.
func TestNoLogNamesNoOne(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(map[bool]string{true: "on", false: "off"}[on], func(t *testing.T) {
			log, _, out := logtest.New(on)
			var replies []string // the failure replies
			fails := func(lines []string) {
				for _, l := range lines {
					if strings.HasPrefix(l, "F") || strings.HasPrefix(l, "TEMP") || strings.HasPrefix(l, "PERM") {
						replies = append(replies, l)
					}
				}
			}
			const hello = "H3\t2\t0\t\tauth\n"

			// The store up.
			s, st, _ := newService(t)
			s.Log = log
			st.accs[nlBlocked] = &accounts.Account{Address: nlBlocked, PasswordHash: "{SHA512-CRYPT}x", Blocked: true}
			p := &panics{}
			dsock, msock := serveDict(t, s, p)
			for _, c := range []struct {
				key, user string
				want      byte
			}{
				{passdbKey(nlPass, nlUser), nlUser, 'O'},        // first login: created
				{passdbKey(nlWrong, nlUser), nlUser, 'O'},       // Dovecot refuses it against the hash
				{passdbKey(nlNewPass, nlNew), nlNew, 'O'},       // created
				{passdbKey(nlShort, nlRefused), nlRefused, 'N'}, // too short to create
				{passdbKey(nlLong, nlRefused), nlRefused, 'N'},
				{passdbKey(nlPass, "ab@chat.test"), "ab@chat.test", 'N'}, // local part too short
				{passdbKey(nlPass, nlBlocked), nlBlocked, 'O'},
				{passdbKey(nlPass, "abcdefghi@other.test"), "abcdefghi@other.test", 'N'},
				{"shared/userdb/" + nlRefused, nlRefused, 'N'},
				{"shared/userdb/" + nlUser, nlUser, 'O'},
				{"priv/passdb/" + nlKeyPass + `"` + nlUser, nlUser, 'F'}, // not served: the key carries a password
				{"shared/last-login/" + nlUser, nlUser, 'F'},
				{"priv/quota/storage", nlUser, 'N'},
			} {
				got := talk(t, dsock, hello+"L"+dict.Escape(c.key)+"\t"+dict.Escape(c.user)+"\n", 1)
				if got[0] == "" || got[0][0] != c.want {
					t.Errorf("L %s: %q, want %c", c.key, got[0], c.want)
				}
				fails(got)
			}
			got := talk(t, dsock, hello+"I0\t0\tshared/userdb/"+nlUser+"/\t"+nlUser+"\n", 1)
			if !strings.HasPrefix(got[0], "F") {
				t.Errorf("iterate under a user: %q, want a failure", got)
			}
			fails(got)
			got = talk(t, dsock, hello+"B1\t"+nlUser+"\nU1\tshared/last-login/"+nlUser+"\nC1\n", 1)
			if !strings.HasPrefix(got[0], "F1") {
				t.Errorf("unset of a last-login key: %q, want a failure", got)
			}
			fails(got)
			for user, want := range map[string]string{nlBlocked: "OK ", nlUser: "NOTFOUND "} {
				got := ask(t, msock, "blocked "+user)
				if !strings.HasPrefix(got, want) {
					t.Errorf("socketmap %s: %q, want %q", user, got, want)
				}
			}

			// A handler that panics quoting what it was asked: the
			// connection ends, doveauth goes on.
			s2, _, _ := newService(t)
			s2.Log, s2.Store = log, panicStore{st}
			d2, m2 := serveDict(t, s2, p)
			talk(t, d2, hello+"L"+dict.Escape(passdbKey(nlPass, nlUser))+"\t"+nlUser+"\n", -1)
			talk(t, d2, hello+"Lshared/userdb/"+nlUser+"\t"+nlUser+"\n", -1)
			ask(t, m2, "blocked "+nlUser)
			// Counted before the connection is closed.
			if n := p.n.Load(); n != 3 {
				t.Errorf("panics counted: %d, want 3", n)
			}

			// PostgreSQL down: a real store, nothing listening.
			store, err := accounts.Open(context.Background(), "postgres://chatmail@"+nlDBHost+":1/chatmail?sslmode=disable&connect_timeout=2", 2)
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			s3, _, _ := newService(t)
			s3.Log, s3.Store, s3.Metrics = log, store, NewMetrics(prometheus.NewRegistry())
			d3, m3 := serveDict(t, s3, p)
			for _, req := range []string{
				"L" + dict.Escape(passdbKey(nlPass, nlUser)) + "\t" + nlUser + "\n",
				"L" + dict.Escape(passdbKey(nlNewPass, nlRefused)) + "\t" + nlRefused + "\n",
				"Lshared/userdb/" + nlUser + "\t" + nlUser + "\n",
				"Lpriv/quota/messages\t" + nlUser + "\n",
				"B1\t" + nlUser + "\nA1\tpriv/quota/messages\t1\nS1\tshared/last-login/" + nlUser + "\t1700000000\nC1\n",
			} {
				got := talk(t, d3, hello+req, 1)
				if !strings.HasPrefix(got[0], "F") {
					t.Errorf("%q with PostgreSQL down: %q, want a failure", req, got)
				}
				fails(got)
			}
			reply := ask(t, m3, "blocked "+nlUser)
			if !strings.HasPrefix(reply, "TEMP") {
				t.Errorf("socketmap with PostgreSQL down: %q, want TEMP", reply)
			}
			fails([]string{reply})

			log.Warn("the test's own warning", "peer", nlAbsentIP+" "+nlUser) // the scan, end to end

			text := out.String()
			addrs := []string{nlUser, nlBlocked, nlNew, nlRefused, "ab@chat.test", "abcdefghi@other.test"}
			passwords := []string{nlPass, nlWrong, nlNewPass, nlShort, nlLong, nlKeyPass}
			if leaks := logtest.Leaks(text, passwords...); len(leaks) > 0 {
				t.Errorf("the log holds passwords %q:\n%s", leaks, text)
			}
			if leaks := logtest.Leaks(strings.Join(replies, "\n"), append(addrs, passwords...)...); len(leaks) > 0 {
				t.Errorf("failure replies (which Dovecot and Postfix log) hold %q:\n%s", leaks, strings.Join(replies, "\n"))
			}
			// Not vacuous: what was logged is there.
			for _, want := range []string{"lookup failed", "sender access lookup failed", "commit failed", "panic while serving a connection", "the test's own warning"} {
				if !strings.Contains(text, want) {
					t.Errorf("the log lacks %q:\n%s", want, text)
				}
			}
			if !on {
				if !strings.Contains(text, nlNew) || !strings.Contains(text, nlDBHost) {
					t.Errorf("with No-Log off the log does not name the new user and the database:\n%s", text)
				}
				return
			}
			if leaks := logtest.Leaks(text, append(addrs, nlDBHost, nlPanicIP, nlAbsentIP)...); len(leaks) > 0 {
				t.Errorf("under No-Log the log names %q:\n%s", leaks, text)
			}
			if bad := logtest.Shapes(text); len(bad) > 0 {
				t.Errorf("under No-Log the log holds the shape of an identity:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}
