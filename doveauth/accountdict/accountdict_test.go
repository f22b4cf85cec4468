package accountdict

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/dict"
)

// memStore is an in-memory Store; down makes every call fail like an
// unreachable database.
type memStore struct {
	mu    sync.Mutex
	accs  map[string]*accounts.Account
	tombs map[string]bool // by string(tombstone)
	down  bool
	gets  int
	// creates counts Create calls; lateTombs hides tombs from HasTombstone,
	// as if the deletion committed between that read and Create.
	creates   int
	lateTombs bool
}

var errDown = errors.New("connection refused")

func (m *memStore) Get(ctx context.Context, addr string) (*accounts.Account, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gets++
	if m.down {
		return nil, errDown
	}
	a, ok := m.accs[addr]
	if !ok {
		return nil, accounts.ErrNotFound
	}
	c := *a
	return &c, nil
}

func (m *memStore) Credentials(ctx context.Context, addr string) (accounts.Credentials, error) {
	a, err := m.Get(ctx, addr)
	if err != nil {
		return accounts.Credentials{}, err
	}
	return accounts.Credentials{PasswordHash: a.PasswordHash, Blocked: a.Blocked}, nil
}

func (m *memStore) Create(ctx context.Context, n accounts.New) (*accounts.Account, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return nil, false, errDown
	}
	m.creates++
	if len(n.Tombstone) != 32 {
		return nil, false, errors.New("no tombstone hash")
	}
	if m.tombs[string(n.Tombstone)] {
		return nil, false, accounts.ErrTombstoned
	}
	if a, ok := m.accs[n.Address]; ok {
		return a, false, nil
	}
	a := &accounts.Account{Address: n.Address, PasswordHash: n.PasswordHash}
	if n.CountMessages {
		zero := int64(0)
		a.SentMessages, a.ReceivedMessages = &zero, &zero
	}
	m.accs[n.Address] = a
	return a, true, nil
}

func (m *memStore) TouchLogin(ctx context.Context, addr string, at time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.accs[addr]; ok {
		d := at.UTC().Truncate(24 * time.Hour)
		a.LastLogin = &d
	}
	return nil
}

func (m *memStore) UpdateQuota(ctx context.Context, addr string, q accounts.Quota) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return errDown
	}
	a, ok := m.accs[addr]
	if !ok {
		return nil
	}
	// As accounts.Store.UpdateQuota's SQL: adding to NULL stays NULL.
	apply := func(c accounts.Counter, v **int64) {
		switch {
		case c.Unset:
			*v = nil
		case c.Set != nil:
			n := *c.Set + c.Add
			*v = &n
		case *v != nil:
			n := **v + c.Add
			*v = &n
		}
	}
	oldS, oldM := a.StorageBytes, a.MessageCount
	apply(q.Storage, &a.StorageBytes)
	apply(q.Messages, &a.MessageCount)
	received := q.Received
	if q.Delivered && (!sameCount(oldS, a.StorageBytes) || !sameCount(oldM, a.MessageCount)) {
		received++
	}
	if received != 0 && a.ReceivedMessages != nil {
		r := received + *a.ReceivedMessages
		a.ReceivedMessages = &r
	}
	return nil
}

// sameCount is SQL's NOT (a IS DISTINCT FROM b).
func sameCount(a, b *int64) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

func (m *memStore) Each(ctx context.Context, fn func(*accounts.Account) error) error {
	for _, a := range m.accs {
		if err := fn(a); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) HasTombstone(ctx context.Context, tombstone []byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down {
		return false, errDown
	}
	return m.tombs[string(tombstone)] && !m.lateTombs, nil
}

func newService(t *testing.T) (*Service, *memStore, *prometheus.Registry) {
	st := &memStore{accs: map[string]*accounts.Account{}, tombs: map[string]bool{}}
	reg := prometheus.NewRegistry()
	c := config.Defaults()
	c.Mail.Domains = []string{"chat.test"}
	return &Service{Store: st, Mail: c.Mail, Accounts: c.Accounts, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: NewMetrics(reg), TombstoneKey: testKey}, st, reg
}

var testKey = accounts.TombstoneKey("0123456789abcdef0123456789abcdef")

func passdb(t *testing.T, s *Service, user, pass string) (map[string]string, bool, error) {
	t.Helper()
	esc := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `'`, `\'`)
	v, found, err := s.Lookup(context.Background(), dict.Lookup{Key: "shared/passdb/" + esc.Replace(pass) + `"` + esc.Replace(user), User: user})
	var m map[string]string
	if found {
		if jerr := json.Unmarshal([]byte(v), &m); jerr != nil {
			t.Fatalf("reply %q: %v", v, jerr)
		}
	}
	return m, found, err
}

func TestJustInTimeCreation(t *testing.T) {
	s, st, reg := newService(t)
	pass := `laksjdlaksjdlak\sjdlk"12j'3l1/k2j3123`
	r, found, err := passdb(t, s, "abcdefghi@chat.test", pass)
	if err != nil || !found || !strings.HasPrefix(r["password"], "{SHA512-CRYPT}$6$") {
		t.Fatalf("first login: %v %v %v", r, found, err)
	}
	if a := st.accs["abcdefghi@chat.test"]; a == nil || a.PasswordHash != r["password"] {
		t.Fatal("account not stored with the returned hash")
	}
	// A second login with another password gets the stored hash back, to be
	// refused by Dovecot; the hash is never overwritten.
	r2, found, err := passdb(t, s, "abcdefghi@chat.test", "another-password")
	if err != nil || !found || r2["password"] != r["password"] {
		t.Errorf("second login: %v %v %v", r2, found, err)
	}
	if n := testutil.ToFloat64(s.Metrics.created); n != 1 {
		t.Errorf("accounts created metric = %v", n)
	}
	u, found, err := s.Lookup(context.Background(), dict.Lookup{Key: "shared/userdb/abcdefghi@chat.test"})
	if err != nil || !found || !strings.Contains(u, `"home":"/home/vmail/mail/abcdefghi@chat.test"`) || !strings.Contains(u, `"uid":"vmail"`) {
		t.Errorf("userdb: %q %v %v", u, found, err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("metric lint: %v %v", problems, err)
	}
}

func TestCreationRules(t *testing.T) {
	s, st, _ := newService(t)
	for _, c := range []struct{ user, pass string }{
		{"abcdefgh@chat.test", "password123"},
		{"abcdefghij@chat.test", "password123"},
		{"abcd+efgh@chat.test", "password123"},
		{"abcd efgh@chat.test", "password123"},
		{"abcdefghi@chat.test", "12345678"},
		{"abcdefghi@other.test", "password123"},
		{"abcdefghi", "password123"},
		{"abc/efghi@chat.test", "password123"},
	} {
		if _, found, err := passdb(t, s, c.user, c.pass); found || err != nil {
			t.Errorf("%s / %s: found=%v err=%v, want not found", c.user, c.pass, found, err)
		}
	}
	if len(st.accs) != 0 {
		t.Errorf("accounts created: %v", st.accs)
	}
	for _, ok := range []string{"abcdefgh1@chat.test", "ABCDEFGHI@chat.test"} {
		if _, found, err := passdb(t, s, ok, "password123"); !found || err != nil {
			t.Errorf("%s: found=%v err=%v", ok, found, err)
		}
	}
	if st.accs["abcdefghi@chat.test"] == nil {
		t.Error("upper-case address not normalized")
	}
	s.Accounts.Registration = "closed"
	if _, found, _ := passdb(t, s, "zzzzzzzzz@chat.test", "password123"); found {
		t.Error("closed registration created an account")
	}
	if _, found, _ := passdb(t, s, "abcdefghi@chat.test", "password123"); !found {
		t.Error("closed registration locked out an existing account")
	}
}

func TestBlocked(t *testing.T) {
	s, st, _ := newService(t)
	passdb(t, s, "abcdefghi@chat.test", "password123")
	st.accs["abcdefghi@chat.test"].Blocked = true
	r, found, err := passdb(t, s, "abcdefghi@chat.test", "password123")
	if err != nil || !found || r["fail"] != "y" || r["password"] == "" {
		t.Errorf("blocked: %v %v %v", r, found, err)
	}
}

func TestStoreDownIsTemporary(t *testing.T) {
	s, st, _ := newService(t)
	passdb(t, s, "abcdefghi@chat.test", "password123")
	st.down = true
	for _, key := range []string{`shared/passdb/password123"abcdefghi@chat.test`, `shared/passdb/password123"zzzzzzzzz@chat.test`, "shared/userdb/abcdefghi@chat.test", "priv/quota/storage"} {
		_, found, err := s.Lookup(context.Background(), dict.Lookup{Key: key, User: "abcdefghi@chat.test"})
		if err == nil || found {
			t.Errorf("%s with the store down: found=%v err=%v, want a failure", key, found, err)
		}
	}
	if err := s.Commit(context.Background(), &dict.Tx{User: "abcdefghi@chat.test", Ops: []dict.Op{{Kind: dict.OpAtomicInc, Key: "priv/quota/storage", Diff: 1}}}); err == nil {
		t.Error("commit with the store down succeeded")
	}
	st.down = false
	if len(st.accs) != 1 {
		t.Error("an account was created while the store was down")
	}
}

func TestQuotaAndLastLogin(t *testing.T) {
	s, st, _ := newService(t)
	passdb(t, s, "abcdefghi@chat.test", "password123")
	ctx := context.Background()
	if _, found, err := s.Lookup(ctx, dict.Lookup{Key: "priv/quota/storage", User: "abcdefghi@chat.test"}); found || err != nil {
		t.Errorf("uncounted storage: found=%v err=%v, want not found so Dovecot counts", found, err)
	}
	err := s.Commit(ctx, &dict.Tx{User: "abcdefghi@chat.test", Ops: []dict.Op{
		{Kind: dict.OpUnset, Key: "priv/quota/storage"},
		{Kind: dict.OpSet, Key: "priv/quota/storage", Value: "1000"},
		{Kind: dict.OpAtomicInc, Key: "priv/quota/storage", Diff: 24},
	}})
	if err != nil {
		t.Fatal(err)
	}
	v, found, err := s.Lookup(ctx, dict.Lookup{Key: "priv/quota/storage", User: "abcdefghi@chat.test"})
	if v != "1024" || !found || err != nil {
		t.Errorf("storage = %q %v %v, want 1024", v, found, err)
	}
	// Deliveries arrive through the LMTP service's own dict name and count
	// as received; the same increment from IMAP (a copy, say) does not.
	inc := []dict.Op{{Kind: dict.OpAtomicInc, Key: "priv/quota/messages", Diff: 1}, {Kind: dict.OpAtomicInc, Key: "priv/quota/storage", Diff: 300}}
	for _, name := range []string{DeliveryQuotaDict, "quota", DeliveryQuotaDict} {
		if err := s.Commit(ctx, &dict.Tx{Hello: &dict.Hello{DictName: name}, User: "abcdefghi@chat.test", Ops: inc}); err != nil {
			t.Fatal(err)
		}
	}
	if r := st.accs["abcdefghi@chat.test"].ReceivedMessages; r == nil || *r != 2 {
		t.Errorf("received = %v, want 2", r)
	}
	if err := s.Commit(ctx, &dict.Tx{Ops: []dict.Op{{Kind: dict.OpSet, Key: "shared/last-login/abcdefghi@chat.test", Value: "1700000000"}}}); err != nil {
		t.Fatal(err)
	}
	if ll := st.accs["abcdefghi@chat.test"].LastLogin; ll == nil || ll.Format(time.DateOnly) != "2023-11-14" {
		t.Errorf("last login %v", ll)
	}
	// last_login_precision = ms
	if err := s.Commit(ctx, &dict.Tx{Ops: []dict.Op{{Kind: dict.OpSet, Key: "shared/last-login/abcdefghi@chat.test", Value: "1800000000123"}}}); err != nil {
		t.Fatal(err)
	}
	if ll := st.accs["abcdefghi@chat.test"].LastLogin; ll == nil || ll.Format(time.DateOnly) != "2027-01-15" {
		t.Errorf("last login from milliseconds: %v", ll)
	}
	if err := s.Commit(ctx, &dict.Tx{Ops: []dict.Op{{Kind: dict.OpSet, Key: "shared/other", Value: "x"}}}); err == nil {
		t.Error("commit of an unknown key succeeded")
	}
}

func TestSplitPassdbKey(t *testing.T) {
	for _, c := range []struct{ in, pass, user string }{
		{`pw"u@x`, "pw", "u@x"},
		{`p\"w\\"u@x`, `p"w\`, "u@x"},
		{`"u@x`, "", "u@x"},
	} {
		p, u, ok := splitPassdbKey(c.in)
		if !ok || p != c.pass || u != c.user {
			t.Errorf("splitPassdbKey(%q) = %q %q %v", c.in, p, u, ok)
		}
	}
	for _, bad := range []string{`no-quote`, `trailing\`, `pw"u\`} {
		if _, _, ok := splitPassdbKey(bad); ok {
			t.Errorf("splitPassdbKey(%q) accepted", bad)
		}
	}
}

func FuzzLookupKey(f *testing.F) {
	for _, s := range []string{`shared/passdb/pw"abcdefghi@chat.test`, `shared/passdb/p\"w"u@chat.test`, "shared/userdb/abcdefghi@chat.test", "priv/quota/storage", `shared/passdb/\`} {
		f.Add(s)
	}
	s, _, _ := newService(nil)
	f.Fuzz(func(t *testing.T, key string) {
		v, found, err := s.Lookup(context.Background(), dict.Lookup{Key: key, User: "abcdefghi@chat.test"})
		if found && (err != nil || v == "") {
			t.Fatalf("found with err %v / empty value", err)
		}
	})
}

// A mail directory without an account no longer blocks creation: doveauth
// probes no filesystem (it may not see the mail directories at all, as
// under ProtectHome=yes). Mail of a deleted account is kept from a new
// registrant by its tombstone, which the store checks (accounts.Store.Create,
// pending mail removal; TestDeletedAddressStaysDead and TestPendingMailTombstone
// in the integration tests).
func TestCreationProbesNoMailDirectory(t *testing.T) {
	s, st, _ := newService(t)
	s.Accounts.MailboxesDir = t.TempDir()
	if err := os.Mkdir(filepath.Join(s.Accounts.MailboxesDir, "abcdefghi@chat.test"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(s.Accounts.MailboxesDir, 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Chmod(s.Accounts.MailboxesDir, 0o700); err != nil {
			t.Error(err)
		}
	})
	if _, found, err := passdb(t, s, "abcdefghi@chat.test", "password123"); !found || err != nil {
		t.Errorf("creation: found=%v err=%v", found, err)
	}
	// A tombstone refuses the address.
	st.tombs[string(testKey.Hash("zyxwvutsr@chat.test"))] = true
	if _, found, err := passdb(t, s, "zyxwvutsr@chat.test", "password123"); found || err != nil {
		t.Errorf("creation over a tombstone: found=%v err=%v", found, err)
	}
	if _, ok := st.accs["zyxwvutsr@chat.test"]; ok || len(st.accs) != 1 {
		t.Errorf("accounts %v", st.accs)
	}
}

// The hand-built JSON answers decode to what was put in, whatever the
// bytes (hashes and homes are printable ASCII, but nothing relies on it).
func TestJSONReplies(t *testing.T) {
	for _, v := range []string{"{SHA512-CRYPT}$6$salt$abc./", `q"b\s`, "ctl\x00\x01\n\t\x1f\x7f", "ütf-8 ✓", ""} {
		for _, blocked := range []bool{false, true} {
			var m map[string]string
			if err := json.Unmarshal([]byte(passdbReply(v, blocked)), &m); err != nil || m["password"] != v || (m["fail"] == "y") != blocked {
				t.Errorf("passdbReply(%q, %v) = %q: %v %v", v, blocked, passdbReply(v, blocked), m, err)
			}
		}
	}
	s, st, _ := newService(t)
	st.accs["abcdefghi@chat.test"] = &accounts.Account{Address: "abcdefghi@chat.test"}
	s.Accounts.MailUser, s.Accounts.MailGroup = `v"mail`, "vm\\ail"
	v, _, err := s.userdbKey(context.Background(), "abcdefghi@chat.test")
	var m map[string]string
	if jerr := json.Unmarshal([]byte(v), &m); err != nil || jerr != nil || m["home"] != s.Accounts.MailboxesDir+"/abcdefghi@chat.test" || m["uid"] != `v"mail` || m["gid"] != "vm\\ail" || len(m) != 3 {
		t.Errorf("userdb answer %q: %v %v %v", v, m, err, jerr)
	}
}
