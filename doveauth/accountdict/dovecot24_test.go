package accountdict

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/dict"
)

// v4 holds the dict sessions captured from Dovecot 2.4.1
// (sidecar/dict/testdata/v4/README.md): user alice@feas.test.
const v4 = "../../sidecar/dict/testdata/v4/"

// replay sends a captured session, with its hello's dict name replaced by
// name, on a new connection to sock and returns everything answered.
func replay(t *testing.T, sock, file, name string) string {
	t.Helper()
	in, err := os.ReadFile(filepath.Join(v4, file+".in"))
	if err != nil {
		t.Fatal(err)
	}
	hello, rest, _ := bytes.Cut(in, []byte("\n"))
	f := strings.Split(string(hello), "\t")
	if len(f) != 5 || f[0] != "H4" {
		t.Fatalf("%s: hello %q", file, hello)
	}
	f[4] = name
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, strings.Join(f, "\t")+"\n"+string(rest)); err != nil {
		t.Fatal(err)
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(v4, file+".out"))
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(want) {
		t.Errorf("%s as %q: answered %q, Dovecot was answered %q", file, name, out, want)
	}
	return string(out)
}

func counts(a *accounts.Account) [3]int64 {
	v := func(p *int64) int64 {
		if p == nil {
			return -1
		}
		return *p
	}
	return [3]int64{v(a.StorageBytes), v(a.MessageCount), v(a.ReceivedMessages)}
}

// Dovecot 2.4's quota_clone and last_login, as captured, keep the same
// facts in the account row as 2.3's quota dict and last_login: storage and
// message count (absolute values now), received messages (a quota_clone
// transaction of the delivery dict that changes the values), the day of the
// last login.
func TestDovecot24QuotaCloneAndLastLogin(t *testing.T) {
	s, st, _ := newService(t)
	const alice = "alice@feas.test"
	zero := int64(0)
	st.accs[alice] = &accounts.Account{Address: alice, ReceivedMessages: &zero}
	sock, _ := serveDict(t, s, &panics{})

	replay(t, sock, "12-imap-login-last-login", "lastlogin")
	if ll := st.accs[alice].LastLogin; ll == nil || !ll.Equal(time.Unix(1795965011, 0).UTC().Truncate(24*time.Hour)) {
		t.Errorf("last login %v, want the day of 1795965011", ll)
	}
	// IMAP's quota_clone (APPEND, then LOGOUT): absolute values, no
	// delivery.
	replay(t, sock, "16-imap-append-quota-clone", "quota")
	if got := counts(st.accs[alice]); got != [3]int64{738, 4, 0} {
		t.Errorf("after IMAP's quota_clone: storage, messages, received = %v, want [738 4 0]", got)
	}
	// LMTP's quota_clone under its own dict name: one delivery.
	replay(t, sock, "17-lmtp-delivery-quota-clone", DeliveryQuotaDict)
	if got := counts(st.accs[alice]); got != [3]int64{1044, 5, 1} {
		t.Errorf("after a delivery: %v, want [1044 5 1]", got)
	}
	// A delivery while IMAP's expunges are not yet written shows fewer
	// messages than the row holds; it is a delivery all the same.
	st.accs[alice].MessageCount = ptr(9)
	replay(t, sock, "17-lmtp-delivery-quota-clone", DeliveryQuotaDict)
	if got := counts(st.accs[alice]); got != [3]int64{1044, 5, 2} {
		t.Errorf("after a delivery that lowered the count: %v, want [1044 5 2]", got)
	}
	// The same transaction from IMAP is no delivery.
	replay(t, sock, "17-lmtp-delivery-quota-clone", "quota")
	if got := counts(st.accs[alice]); got != [3]int64{1044, 5, 2} {
		t.Errorf("IMAP's quota_clone counted as a delivery: %v", got)
	}
	// A delivery refused for quota (552) writes the values unchanged: no
	// delivery (captured from Dovecot 2.4.1 with storage_size = 1k).
	replay(t, sock, "17-lmtp-delivery-quota-clone", DeliveryQuotaDict)
	if got := counts(st.accs[alice]); got != [3]int64{1044, 5, 2} {
		t.Errorf("a refused delivery counted: %v, want [1044 5 2]", got)
	}
	// Dovecot 2.3's quota dict sets absolute values only when it recounts
	// (no delivery), and sends each delivery as an increment.
	ctx := context.Background()
	h23 := &dict.Hello{Major: 3, Minor: 2, DictName: DeliveryQuotaDict}
	if err := s.Commit(ctx, &dict.Tx{Hello: h23, User: alice, Ops: []dict.Op{
		{Kind: dict.OpSet, Key: quotaStorage, Value: "2000"}, {Kind: dict.OpSet, Key: quotaMessages, Value: "7"},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, &dict.Tx{Hello: h23, User: alice, Ops: []dict.Op{
		{Kind: dict.OpAtomicInc, Key: quotaStorage, Diff: 100}, {Kind: dict.OpAtomicInc, Key: quotaMessages, Diff: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	if got := counts(st.accs[alice]); got != [3]int64{2100, 8, 3} {
		t.Errorf("2.3's recount and delivery: %v, want [2100 8 3]", got)
	}
	// An account created while counting was off keeps no count.
	st.accs[alice].ReceivedMessages = nil
	replay(t, sock, "17-lmtp-delivery-quota-clone", DeliveryQuotaDict)
	if got := counts(st.accs[alice]); got != [3]int64{1044, 5, -1} {
		t.Errorf("delivery without counting: %v, want [1044 5 -1]", got)
	}
}

func ptr(v int64) *int64 { return &v }

// One policy for both Dovecot versions: what 2.3's dict passdb answers
// (one lookup with the password in the key) and what 2.4's Lua script
// gets (Passdb, then Create for an unknown account) agree for every kind
// of login, and leave the same accounts behind.
func TestSamePolicyBothVersions(t *testing.T) {
	const pass = "password123"
	type setup func(*Service, *memStore)
	blocked := func(_ *Service, st *memStore) {
		st.accs["blockedxx@chat.test"] = &accounts.Account{Address: "blockedxx@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y", Blocked: true}
	}
	existing := func(_ *Service, st *memStore) {
		st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y"}
	}
	tomb := func(s *Service, st *memStore) { st.tombs[string(s.TombstoneKey.Hash("zyxwvutsr@chat.test"))] = true }
	closed := func(s *Service, _ *memStore) { s.Accounts.Registration = "closed" }
	down := func(_ *Service, st *memStore) { st.down = true }
	drained := func(s *Service, _ *memStore) { s.Accounts.CreateBurst, s.Accounts.CreatePerMinute = 0, 1 }
	for _, c := range []struct {
		name, user, pass string
		setup            setup
		want             Result
	}{
		{"new", "zyxwvutsr@chat.test", pass, nil, Created},
		{"upper case", "ZYXWVUTSR@chat.test", pass, nil, Created},
		{"existing", "abcdefghi@chat.test", pass, existing, Found},
		{"existing, long password", "abcdefghi@chat.test", strings.Repeat("p", 129), existing, NotFound},
		{"blocked", "blockedxx@chat.test", pass, blocked, Blocked},
		{"foreign", "zyxwvutsr@other.test", pass, nil, NotFound},
		{"short local part", "abc@chat.test", pass, nil, NotFound},
		{"punctuation", "abcd.efgh@chat.test", pass, nil, NotFound},
		{"short password", "zyxwvutsr@chat.test", "1234567", nil, NotFound},
		{"long password", "zyxwvutsr@chat.test", strings.Repeat("p", 129), nil, NotFound},
		{"tombstone", "zyxwvutsr@chat.test", pass, tomb, NotFound},
		{"closed", "zyxwvutsr@chat.test", pass, closed, NotFound},
		{"store down", "abcdefghi@chat.test", pass, down, TempFail},
		{"rate", "zyxwvutsr@chat.test", pass, drained, RateLimited},
	} {
		t.Run(c.name, func(t *testing.T) {
			// 2.3: the dict passdb.
			s23, st23, _ := newService(t)
			// 2.4: Passdb, then Create.
			s24, st24, _ := newService(t)
			if c.setup != nil {
				c.setup(s23, st23)
				c.setup(s24, st24)
			}
			v, found, err23 := s23.Lookup(context.Background(), dict.Lookup{Key: passdbKey(c.pass, c.user), User: c.user})
			hash, res, err24 := s24.Passdb(context.Background(), c.user, len(c.pass))
			if res == NotFound && err24 == nil {
				hash, res, err24 = s24.Create(context.Background(), c.user, c.pass)
			}
			if res != c.want {
				t.Errorf("2.4: %s, want %s", res, c.want)
			}
			switch c.want {
			case TempFail, RateLimited:
				if err23 == nil || err24 == nil || err23.Error() != err24.Error() {
					t.Errorf("errors: 2.3 %v, 2.4 %v", err23, err24)
				}
			case NotFound:
				if found || err23 != nil || hash != "" || err24 != nil {
					t.Errorf("2.3: %q %v %v; 2.4: %q %v", v, found, err23, hash, err24)
				}
			default:
				if !found || err23 != nil || err24 != nil || !strings.Contains(v, `"password":"{SHA512-CRYPT}$6$`) || !strings.HasPrefix(hash, "{SHA512-CRYPT}$6$") {
					t.Errorf("2.3: %q %v %v; 2.4: %q %v", v, found, err23, hash, err24)
				}
				if blocked := strings.Contains(v, `"fail":"y"`); blocked != (c.want == Blocked) {
					t.Errorf("2.3 blocked = %v: %q", blocked, v)
				}
			}
			if len(st23.accs) != len(st24.accs) {
				t.Errorf("accounts: 2.3 %d, 2.4 %d", len(st23.accs), len(st24.accs))
			}
			for addr := range st23.accs {
				if st24.accs[addr] == nil {
					t.Errorf("2.4 did not create %s", addr)
				}
			}
		})
	}
}

// TestDictAuth: with dict_auth = false (Dovecot 2.4, whose mail processes
// all reach the dict socket) the dict answers passdb, userdb and iterate
// as keys it does not serve, and creates nothing; quota and last-login
// work as before. With true (2.3's default) it serves them all.
func TestDictAuth(t *testing.T) {
	ctx := context.Background()
	for _, auth := range []bool{true, false} {
		s, st, _ := newService(t)
		s.NoDictAuth = !auth
		st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test", PasswordHash: "{SHA512-CRYPT}$6$x$y"}
		v, found, err := s.Lookup(ctx, dict.Lookup{Key: passdbKey("password123", "abcdefghi@chat.test"), User: "abcdefghi@chat.test"})
		if found != auth || (err == nil) != auth || strings.Contains(v, "SHA512") != auth {
			t.Errorf("dict_auth %v: passdb of an account: %q %v %v", auth, v, found, err)
		}
		// A first login through the dict creates the account only with auth.
		_, found, err = s.Lookup(ctx, dict.Lookup{Key: passdbKey("password123", "zyxwvutsr@chat.test"), User: "zyxwvutsr@chat.test"})
		if found != auth || (err == nil) != auth || (st.accs["zyxwvutsr@chat.test"] != nil) != auth {
			t.Errorf("dict_auth %v: first login: %v %v, created %v", auth, found, err, st.accs["zyxwvutsr@chat.test"] != nil)
		}
		v, found, err = s.Lookup(ctx, dict.Lookup{Key: "shared/userdb/abcdefghi@chat.test", User: "abcdefghi@chat.test"})
		if found != auth || (err == nil) != auth || strings.Contains(v, "home") != auth {
			t.Errorf("dict_auth %v: userdb: %q %v %v", auth, v, found, err)
		}
		// Refused as any other key doveauth does not serve.
		_, _, other := s.Lookup(ctx, dict.Lookup{Key: "shared/other/x"})
		if !auth && (err == nil || err.Error() != other.Error()) {
			t.Errorf("dict_auth false: userdb %v, an unknown key %v", err, other)
		}
		var listed []string
		err = s.Iterate(ctx, dict.Iterate{Path: userdbPrefix}, func(k, _ string) error {
			listed = append(listed, k)
			return nil
		})
		if (err == nil) != auth || (len(listed) > 0) != auth {
			t.Errorf("dict_auth %v: iterate: %v %q", auth, err, listed)
		}
		// Quota and last login keep working either way.
		if err := s.Commit(ctx, &dict.Tx{User: "abcdefghi@chat.test", Ops: []dict.Op{{Kind: dict.OpSet, Key: quotaStorage, Value: "2000"}}}); err != nil {
			t.Errorf("dict_auth %v: quota commit: %v", auth, err)
		}
		if v, found, err := s.Lookup(ctx, dict.Lookup{Key: quotaStorage, User: "abcdefghi@chat.test"}); v != "2000" || !found || err != nil {
			t.Errorf("dict_auth %v: quota lookup: %q %v %v", auth, v, found, err)
		}
		if err := s.Commit(ctx, &dict.Tx{Ops: []dict.Op{{Kind: dict.OpSet, Key: "shared/last-login/abcdefghi@chat.test", Value: "1700000000"}}}); err != nil || st.accs["abcdefghi@chat.test"].LastLogin == nil {
			t.Errorf("dict_auth %v: last login: %v", auth, err)
		}
		// The HTTP side (2.4's Lua) is untouched by the setting.
		if _, res, err := s.Passdb(ctx, "abcdefghi@chat.test", 11); res != Found || err != nil {
			t.Errorf("dict_auth %v: HTTP passdb: %s %v", auth, res, err)
		}
	}
}
