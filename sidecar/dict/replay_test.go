package dict

import (
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// memStore is an in-memory dict as Dovecot's file dict behaves: priv/ keys
// belong to the user, shared/ keys to everyone. It answers like the
// throwaway server the sessions under testdata/v3 and testdata/v4 were
// captured with.
type memStore struct {
	mu      sync.Mutex
	values  map[[2]string]string // {user or "", key}
	commits []*Tx
}

func newMemStore() *memStore {
	turn := "127.0.0.1:3478:1700000000:pass"
	return &memStore{values: map[[2]string]string{
		{"", "shared/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn"}:                                  turn,
		{"", "shared/58b5981328400c6b5003000083ecc375/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn"}: turn,
		{"", "shared/kv/escaped"}: "a\tb\nc\x01d",
	}}
}

func storeKey(user, key string) [2]string {
	if strings.HasPrefix(key, "priv/") {
		return [2]string{user, key}
	}
	return [2]string{"", key}
}

func (m *memStore) Lookup(ctx context.Context, req Lookup) (string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.values[storeKey(req.User, req.Key)]
	return v, ok, nil
}

func (m *memStore) Iterate(ctx context.Context, req Iterate, emit func(k, v string) error) error {
	m.mu.Lock()
	var keys []string
	for k := range m.values {
		rest, under := strings.CutPrefix(k[1], req.Path)
		switch {
		case !under || (k[0] != "" && k[0] != req.User):
		case req.Flags&IterExactKey != 0 && rest != "":
		case req.Flags&IterRecurse == 0 && strings.Contains(rest, "/"):
		default:
			keys = append(keys, k[1])
		}
	}
	sort.Strings(keys)
	vals := make([]string, len(keys))
	for i, k := range keys {
		vals[i] = m.values[storeKey(req.User, k)]
	}
	m.mu.Unlock()
	for i, k := range keys {
		if err := emit(k, vals[i]); err != nil {
			return err
		}
	}
	return nil
}

func (m *memStore) Commit(ctx context.Context, tx *Tx) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.commits = append(m.commits, tx)
	for _, op := range tx.Ops {
		k := storeKey(tx.User, op.Key)
		switch op.Kind {
		case OpSet:
			m.values[k] = op.Value
		case OpUnset:
			delete(m.values, k)
		case OpAtomicInc:
			n, _ := strconv.ParseInt(m.values[k], 10, 64)
			m.values[k] = strconv.FormatInt(n+op.Diff, 10)
		}
	}
	return nil
}

// replay sends each captured session of dir (NN-name.in, in name order) on
// its own connection, all at once as Dovecot's client may pipeline, and
// compares what comes back with NN-name.out.
func replay(t *testing.T, dir string, h Handler) {
	t.Helper()
	_, sock := startServer(t, h)
	ins, err := filepath.Glob(filepath.Join(dir, "*.in"))
	if err != nil || len(ins) == 0 {
		t.Fatalf("no sessions under %s: %v", dir, err)
	}
	sort.Strings(ins)
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		req, err := os.ReadFile(in)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(strings.TrimSuffix(in, ".in") + ".out")
		if err != nil {
			t.Fatal(err)
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		c.(*net.UnixConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: replied\n%q\nwant\n%q", name, got, want)
		}
	}
}

// TestReplayDovecot24 replays what Dovecot 2.4.1 sent (doveadm dict,
// last_login, IMAP METADATA, quota_clone) and checks the replies byte for
// byte, then what the handler was given.
func TestReplayDovecot24(t *testing.T) {
	m := newMemStore()
	replay(t, "testdata/v4", m)

	const alice = "alice@feas.test"
	for k, want := range map[[2]string]string{
		{alice, "priv/quota/storage"}:                                "1044",
		{alice, "priv/quota/messages"}:                               "5",
		{alice, "priv/kv/counter"}:                                   "3",
		{"", "shared/kv/tab\there"}:                                  "x\ty\x01z",
		{"", "shared/last-login/" + alice}:                           "1795965011",
		{alice, "priv/kv/expiring"}:                                  "",
		{alice, "priv/58b5981328400c6b5003000083ecc375/devicetoken"}: "",
	} {
		if got := m.values[k]; got != want {
			t.Errorf("%q = %q, want %q", k, got, want)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var expiring, names []string
	for _, tx := range m.commits {
		if tx.Hello.Major != 4 || tx.Hello.Minor != 0 || tx.User != alice {
			t.Errorf("transaction %d: hello %+v, user %q", tx.ID, tx.Hello, tx.User)
		}
		if tx.ExpireSecs != 0 {
			expiring = append(expiring, tx.Ops[0].Key+" "+strconv.Itoa(int(tx.ExpireSecs)))
		}
		names = append(names, tx.Hello.DictName)
	}
	if len(expiring) != 1 || expiring[0] != "priv/kv/expiring 3600" {
		t.Errorf("transactions with an expiry: %q, want only doveadm dict set -e 3600", expiring)
	}
	if got := strings.Join(names, " "); got != "metadata metadata metadata metadata metadata lastlogin metadata metadata quota quota" {
		t.Errorf("dict names of the commits: %s", got)
	}
}

// TestReplayDovecot23 replays Dovecot 2.3.19's doveadm dict sessions.
func TestReplayDovecot23(t *testing.T) {
	m := newMemStore()
	replay(t, "testdata/v3", m)
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.commits) != 4 {
		t.Fatalf("%d commits, want 4", len(m.commits))
	}
	for _, tx := range m.commits {
		if tx.Hello.Major != 3 || tx.Hello.Minor != 2 || tx.ExpireSecs != 0 {
			t.Errorf("transaction %d: hello %+v, expire %d", tx.ID, tx.Hello, tx.ExpireSecs)
		}
	}
}

// The 4.0 differences: BEGIN's third field is parsed there (and ignored in
// 3.x, as Dovecot 2.3's server does), V is accepted, D is not.
func TestProtocol4(t *testing.T) {
	h := &fakeHandler{}
	_, sock := startServer(t, h)
	const hello4 = "H4\t0\t0\t\tquota\n"
	got := exchange(t, sock, hello4+"B7\tu@x\t86400\nV7\tyes\nS7\tk\tv\nC7\n"+
		"B8\tu@x\nS8\tk\tv\nV8\tno\nC8\n", 2)
	if got[0] != "O7" || got[1] != "O8" {
		t.Errorf("replies %q", got)
	}
	if tx := h.commits[0]; tx.ExpireSecs != 86400 || !tx.HideLogValues || tx.Hello.Major != 4 || tx.Hello.DictName != "quota" {
		t.Errorf("first transaction %+v", tx)
	}
	if tx := h.commits[1]; tx.ExpireSecs != 0 || tx.HideLogValues {
		t.Errorf("second transaction %+v", tx)
	}
	// 3.x: a third BEGIN field is not an expiry.
	got = exchange(t, sock, hello+"B1\tu@x\tjunk\nS1\tk\tv\nV1\tY\nC1\n", 1)
	if tx := h.commits[2]; got[0] != "O1" || tx.ExpireSecs != 0 || !tx.HideLogValues {
		t.Errorf("3.x begin with three fields: %q, %+v", got, tx)
	}
	for _, req := range []string{
		hello4 + "B1\tu\t0\nS1\tk\tv\nD1\n",       // no async commit in 4.0
		hello4 + "B1\tu\tsoon\n",                  // expiry not a number
		hello4 + "B1\tu\t4294967296\n",            // nor a 32-bit one
		hello4 + "B1\tu\t0\nV1\tmaybe\n",          // hide_log_values neither yes nor no
		hello4 + "B1\tu\t0\nV1\tn\n",              // Dovecot takes y but not n
		hello4 + "V1\tyes\n",                      // no such transaction
		"H5\t0\t0\t\tquota\n", "H4x\t0\t0\t\tq\n", // unknown versions
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Errorf("%q: read %q, %v; want a closed connection", req, b, err)
		}
		c.Close()
	}
}
