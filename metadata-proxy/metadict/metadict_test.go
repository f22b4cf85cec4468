package metadict

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/dict"
	"chatmail.dev/sidecar/pgtest"
	"chatmail.dev/sidecar/turncred"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

// fakeStore keeps tokens per account in memory, as the real store does.
type fakeStore struct {
	mu      sync.Mutex
	tokens  map[string][]string
	queued  map[string]int
	expiry  int64
	missing map[string]bool // accounts that do not exist or are blocked
	fail    error
	// issue, if set, answers IssueTurnCredential; issued and read count
	// the calls of IssueTurnCredential and TurnCredential.
	issue        func(address string) (int64, error)
	issued, read int
	// have holds the credentials TurnCredential hands out again.
	have map[string]int64
}

func newFake() *fakeStore {
	return &fakeStore{tokens: map[string][]string{}, queued: map[string]int{}, expiry: 1800000000, missing: map[string]bool{}}
}

func (f *fakeStore) IssueTurnCredential(_ context.Context, address string, _ time.Time, _ time.Duration) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, f.fail
	}
	if f.missing[address] {
		return 0, accounts.ErrNotFound
	}
	f.issued++
	if f.issue != nil {
		return f.issue(address)
	}
	return f.expiry, nil
}

func (f *fakeStore) TurnCredential(_ context.Context, address string, _ time.Time) (int64, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, false, f.fail
	}
	if f.missing[address] {
		return 0, false, accounts.ErrNotFound
	}
	f.read++
	e, ok := f.have[address]
	return e, ok, nil
}

func (f *fakeStore) SetDeviceToken(_ context.Context, address, tok string, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.missing[address] {
		return accounts.ErrNotFound
	}
	if !slices.Contains(f.tokens[address], tok) {
		f.tokens[address] = append(f.tokens[address], tok)
	}
	return nil
}

func (f *fakeStore) DeleteDeviceTokens(_ context.Context, address string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	delete(f.tokens, address)
	return nil
}

func (f *fakeStore) DeviceTokens(_ context.Context, address string, _ time.Time) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	return slices.Clone(f.tokens[address]), nil
}

func (f *fakeStore) QueuePushes(_ context.Context, address string, _ time.Time) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return 0, f.fail
	}
	f.queued[address]++
	return int64(len(f.tokens[address])), nil
}

var secret = []byte("a TURN secret of thirty-two bytes")

func newService(st Store, log *slog.Logger) *Service {
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Service{
		Store:             st,
		Turn:              Turn{Host: "chat.example.org", Port: 3478, Lifetime: 120 * time.Hour, Secret: secret},
		IrohRelay:         "https://iroh.example.org",
		AppVersions:       `{"clients":[]}`,
		MaxSMTPRecipients: 50,
		Push:              true,
		Log:               log,
		Metrics:           NewMetrics(nil),
	}
}

// serve starts a dict server on the service and returns its socket.
func serve(t *testing.T, s *Service) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "metadata.socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &dict.Server{Handler: s, Log: s.Log, IdleTimeout: time.Minute, RequestTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// session sends the lines on one connection and returns n reply lines.
func session(t *testing.T, sock, req string, n int) []string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	var got []string
	for range n {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		got = append(got, strings.TrimSuffix(l, "\n"))
	}
	return got
}

const (
	hello23 = "H3\t2\t0\t\tmetadata\n"
	hello24 = "H4\t0\t0\t\tmetadata\n"
	// Dovecot's LMTP, the one that may announce new mail.
	helloLMTP = "H4\t0\t0\t\t" + DeliveryDictName + "\n"
	server    = "shared/" + guid + "/vendor/vendor.dovecot/pvt/server/"
	alice     = "alice@example.org"
	bob       = "bob@example.org"
)

func TestServerMetadata(t *testing.T) {
	st := newFake()
	sock := serve(t, newService(st, nil))
	want := turncred.Value("chat.example.org", 3478, 1800000000, turncred.Password(secret, "1800000000"))
	for _, hello := range []string{hello23, hello24} {
		got := session(t, sock, hello+
			"L"+server+"vendor/deltachat/turn\t"+alice+"\n"+
			"L"+server+"vendor/deltachat/irohrelay\t"+alice+"\n"+
			"L"+server+"vendor/deltachat/maxsmtprecipients\t"+alice+"\n"+
			"L"+server+"vendor/deltachat/appversions\t"+alice+"\n"+
			"L"+server+"comment\t"+alice+"\n"+
			"L"+server+"admin\t"+alice+"\n"+
			"L"+server+"vendor/deltachat/missing\t"+alice+"\n"+
			"Lshared/"+guid+"/vendor/deltachat/turn\t"+alice+"\n"+
			"Lpriv/"+guid+"/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn\t"+alice+"\n"+
			"Lpriv/"+guid+"/messagenew\t"+alice+"\n", 10)
		if w := []string{"O" + want, "Ohttps://iroh.example.org", "O50", `O{"clients":[]}`, "N",
			"N", "N", "N", "N", "N"}; !slices.Equal(got, w) {
			t.Errorf("%q: replies\n%q\nwant\n%q", hello, got, w)
		}
	}
	// The value splits as Delta Chat splits it: host, port, expiry (the
	// username), password.
	host, rest, _ := strings.Cut(want, ":")
	port, rest, _ := strings.Cut(rest, ":")
	user, pass, _ := strings.Cut(rest, ":")
	if host != "chat.example.org" || port != "3478" || user != "1800000000" || pass != turncred.Password(secret, user) {
		t.Errorf("turn value %q", want)
	}
}

// Settings left empty are not found; so is turn without a user or for an
// account that does not exist or is blocked.
func TestNotServed(t *testing.T) {
	st := newFake()
	st.missing[bob] = true
	s := newService(st, nil)
	s.IrohRelay, s.AppVersions = "", ""
	sock := serve(t, s)
	got := session(t, sock, hello24+
		"L"+server+"vendor/deltachat/irohrelay\t"+alice+"\n"+
		"L"+server+"vendor/deltachat/appversions\t"+alice+"\n"+
		"L"+server+"comment\t"+alice+"\n"+
		"L"+server+"admin\t"+alice+"\n"+
		"L"+server+"vendor/deltachat/turn\t"+bob+"\n"+
		"L"+server+"vendor/deltachat/turn\t\n"+
		"L"+server+"vendor/deltachat/turn\tnot an address\n"+
		"L"+server+"vendor/deltachat/maxsmtprecipients\t\n", 8)
	if want := []string{"N", "N", "N", "N", "N", "N", "N", "O50"}; !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
}

// The user is L's second field, or else the hello's; in a transaction, B's.
func TestUserField(t *testing.T) {
	st := newFake()
	sock := serve(t, newService(st, nil))
	got := session(t, sock, "H3\t2\t0\t"+alice+"\tmetadata\n"+
		"B1\t"+bob+"\nS1\tpriv/"+guid+"/devicetoken\tbobs\nC1\n"+
		"B2\nS2\tpriv/"+guid+"/devicetoken\talices\nC2\n"+
		"Lpriv/"+guid+"/devicetoken\n"+
		"Lpriv/"+guid+"/devicetoken\t"+bob+"\n", 4)
	if want := []string{"O1", "O2", "Oalices", "Obobs"}; !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
}

func TestDeviceTokenTransactions(t *testing.T) {
	st := newFake()
	s := newService(st, nil)
	woken := 0
	s.Queued = func() { woken++ }
	sock := serve(t, s)
	tok := "priv/" + guid + "/devicetoken"
	got := session(t, sock, helloLMTP+
		"B1\t"+alice+"\t0\nS1\t"+tok+"\t1111\nC1\n"+
		"B2\t"+alice+"\t0\nS2\t"+tok+"\t2222\nS2\t"+tok+"\t1111\nC2\n"+
		"L"+tok+"\t"+alice+"\n"+
		"L"+tok+"\t"+bob+"\n"+
		// Only devicetoken and messagenew are stored; the rest is dropped,
		// the commit answered OK (a failure would make Dovecot log an
		// error, at the client's will), and the other operations apply.
		"B3\t"+alice+"\t0\nS3\t"+tok+"\t3333\nS3\tpriv/"+guid+"/comment\tx\nC3\n"+
		"B4\t"+alice+"\t0\nS4\t"+server+"comment\tmine\nC4\n"+
		"B5\t"+alice+"\t0\nA5\t"+tok+"\t1\nC5\n"+
		"B6\t"+alice+"\t0\nS6\t"+tok+"\twith space\nC6\n"+
		"B7\t"+alice+"\t0\nS7\t"+tok+"\t"+strings.Repeat("x", accounts.MaxDeviceTokenLength+1)+"\nC7\n"+
		"B8\t"+alice+"\t0\nS8\t"+tok+"\t\nC8\n"+
		"L"+tok+"\t"+alice+"\n"+
		// New mail: the transaction the Lua script makes.
		"B9\t"+alice+"\t0\nS9\tpriv/"+guid+"/messagenew\t\nC9\n"+
		// Unset of anything else is a no-op; of devicetoken, all go.
		"B10\t"+alice+"\t0\nU10\tpriv/"+guid+"/comment\nC10\n"+
		"L"+tok+"\t"+alice+"\n"+
		"B11\t"+alice+"\t0\nU11\t"+tok+"\nC11\n"+
		"L"+tok+"\t"+alice+"\n"+
		"I9\t0\tpriv/"+guid+"/\t"+alice+"\n", 17)
	want := []string{"O1", "O2", "O1111 2222", "O",
		"O3", "O4", "O5", "O6", "O7", "O8",
		"O1111 2222 3333", "O9", "O10", "O1111 2222 3333", "O11", "O", ""}
	if !slices.Equal(got, want) {
		t.Errorf("replies\n%q\nwant\n%q", got, want)
	}
	if st.queued[alice] != 1 || woken != 1 {
		t.Errorf("new mail: queued %d, worker woken %d; want 1, 1", st.queued[alice], woken)
	}
	m := s.Metrics
	for _, c := range []struct {
		name      string
		got, want float64
	}{
		{"commits ok", testutil.ToFloat64(m.commits.WithLabelValues(resultOK)), 5},
		{"commits dropped", testutil.ToFloat64(m.commits.WithLabelValues(resultDropped)), 6},
		{"commits refused", testutil.ToFloat64(m.commits.WithLabelValues(resultRefused)), 0},
		{"keys dropped", testutil.ToFloat64(m.dropped.WithLabelValues(dropKey)), 3},
		{"tokens dropped", testutil.ToFloat64(m.dropped.WithLabelValues(dropToken)), 3},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
}

// Until the store is migrated, what needs it fails temporarily; the
// settings are served.
func TestNotReady(t *testing.T) {
	st := newFake()
	s := newService(st, nil)
	var ready bool
	s.Ready = func() bool { return ready }
	sock := serve(t, s)
	req := hello24 +
		"L" + server + "vendor/deltachat/turn\t" + alice + "\n" +
		"L" + server + "vendor/deltachat/maxsmtprecipients\t" + alice + "\n" +
		"Lpriv/" + guid + "/devicetoken\t" + alice + "\n" +
		"B1\t" + alice + "\t0\nS1\tpriv/" + guid + "/devicetoken\ttok\nC1\n"
	got := session(t, sock, req, 4)
	if !strings.HasPrefix(got[0], "F") || got[1] != "O50" || !strings.HasPrefix(got[2], "F") || !strings.HasPrefix(got[3], "F1\t") {
		t.Errorf("not ready: %q", got)
	}
	if len(st.tokens) != 0 {
		t.Error("a token stored before the store was ready")
	}
	ready = true
	if got := session(t, sock, req, 4); !strings.HasPrefix(got[0], "O") || got[3] != "O1" {
		t.Errorf("ready: %q", got)
	}
}

// A store that fails gives temporary failures, never "not found" or a
// wrong answer.
func TestStoreDown(t *testing.T) {
	st := newFake()
	st.fail = errors.New("connection refused")
	sock := serve(t, newService(st, nil))
	got := session(t, sock, helloLMTP+
		"L"+server+"vendor/deltachat/turn\t"+alice+"\n"+
		"Lpriv/"+guid+"/devicetoken\t"+alice+"\n"+
		"B1\t"+alice+"\t0\nS1\tpriv/"+guid+"/devicetoken\ttok\nC1\n"+
		"B2\t"+alice+"\t0\nS2\tpriv/"+guid+"/messagenew\t\nC2\n", 4)
	for i, want := range []string{"F" + errUnavailable.Error(), "F" + errUnavailable.Error(), "F1\t" + errUnavailable.Error(), "F2\t" + errUnavailable.Error()} {
		if got[i] != want {
			t.Errorf("reply %d = %q, want %q", i, got[i], want)
		}
	}
}

// With push off, tokens are accepted and not kept; new mail queues nothing.
func TestPushOff(t *testing.T) {
	st := newFake()
	s := newService(st, nil)
	s.Push = false
	sock := serve(t, s)
	got := session(t, sock, helloLMTP+
		"B1\t"+alice+"\t0\nS1\tpriv/"+guid+"/devicetoken\ttok\nC1\n"+
		"B2\t"+alice+"\t0\nS2\tpriv/"+guid+"/messagenew\t\nC2\n"+
		"Lpriv/"+guid+"/devicetoken\t"+alice+"\n"+
		"B3\t"+alice+"\t0\nS3\tpriv/"+guid+"/other\tx\nC3\n", 4)
	if want := []string{"O1", "O2", "O", "O3"}; !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
	if len(st.tokens) != 0 || len(st.queued) != 0 {
		t.Errorf("push off stored %v, queued %v", st.tokens, st.queued)
	}
}

// The captured Dovecot 2.4 METADATA sessions (sidecar/dict/testdata/v4),
// against this service: the turn value, the devicetoken round trip, the
// empty iteration, the unset.
func TestDovecotSessions(t *testing.T) {
	st := newFake()
	st.expiry = 1700000000
	s := newService(st, nil)
	s.Turn.Host = "127.0.0.1"
	sock := serve(t, s)
	dir := "../../sidecar/dict/testdata/v4/"
	for _, c := range []struct {
		name string
		want []string
	}{
		{"13-imap-getmetadata", []string{"O127.0.0.1:3478:1700000000:" + turncred.Password(secret, "1700000000"), "N"}},
		{"14-imap-setmetadata-getmetadata-depth", []string{"O1", "Otok123", "", "Otok123", "N"}},
		{"15-imap-setmetadata-nil", []string{"O2"}},
	} {
		name, want := c.name, c.want
		req, err := os.ReadFile(dir + name + ".in")
		if err != nil {
			t.Fatal(err)
		}
		if got := session(t, sock, string(req), len(want)); !slices.Equal(got, want) {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if len(st.tokens["alice@feas.test"]) != 0 {
		t.Errorf("tokens after SETMETADATA NIL: %q", st.tokens["alice@feas.test"])
	}
}

// Against the real store: the turn credential is tied to the account,
// handed out again within its lifetime, refused to a blocked account; a
// token one account sets is invisible to another.
func TestWithStore(t *testing.T) {
	ctx := context.Background()
	store, _ := pgtest.Store(t)
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	for _, a := range []string{alice, bob} {
		if _, _, err := store.Create(ctx, accounts.New{Address: a, PasswordHash: "{PLAIN}x", Tombstone: key.Hash(a)}); err != nil {
			t.Fatal(err)
		}
	}
	s := newService(store, nil)
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	s.Now = func() time.Time { return now }
	sock := serve(t, s)
	turnKey := "L" + server + "vendor/deltachat/turn\t"
	first := session(t, sock, hello24+turnKey+alice+"\n", 1)[0]
	parts := strings.SplitN(strings.TrimPrefix(first, "O"), ":", 4)
	if len(parts) != 4 || parts[0] != "chat.example.org" || parts[1] != "3478" || parts[3] != turncred.Password(secret, parts[2]) {
		t.Fatalf("turn value %q", first)
	}
	expiry, err := turncred.ParseUsername(parts[2])
	if err != nil || time.Unix(expiry, 0).Before(now.Add(96*time.Hour)) || time.Unix(expiry, 0).After(now.Add(144*time.Hour)) {
		t.Errorf("expiry %q (%v), want about 5 days from now", parts[2], err)
	}
	// A day later: the same credential; bob gets his own.
	now = now.Add(24 * time.Hour)
	if again := session(t, sock, hello24+turnKey+alice+"\n", 1)[0]; again != first {
		t.Errorf("second login: %q, want %q again", again, first)
	}
	if b := session(t, sock, hello24+turnKey+bob+"\n", 1)[0]; b == first || !strings.HasPrefix(b, "Ochat.example.org:3478:") {
		t.Errorf("bob's credential %q (alice's %q)", b, first)
	}
	// Blocked: not found; unknown account: not found.
	if err := store.SetBlocked(ctx, alice, true); err != nil {
		t.Fatal(err)
	}
	if got := session(t, sock, hello24+turnKey+alice+"\n"+turnKey+"carol@example.org\n", 2); got[0] != "N" || got[1] != "N" {
		t.Errorf("blocked and unknown accounts: %q", got)
	}
	if owner, err := store.TurnCredentialAccount(ctx, expiry, now); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("a blocked account's credential usable: %q %v", owner, err)
	}
	store.SetBlocked(ctx, alice, false)

	tok := "priv/" + guid + "/devicetoken"
	got := session(t, sock, helloLMTP+
		"B1\t"+alice+"\t0\nS1\t"+tok+"\topenpgp:alice1\nC1\n"+
		"B2\t"+alice+"\t0\nS2\t"+tok+"\topenpgp:alice1\nC2\n"+
		"B3\t"+bob+"\t0\nS3\t"+tok+"\topenpgp:bob1\nC3\n"+
		"L"+tok+"\t"+alice+"\n"+
		"L"+tok+"\t"+bob+"\n"+
		"Lpriv/0123456789abcdef0123456789abcdef/devicetoken\t"+bob+"\n"+
		"L"+tok+"\tcarol@example.org\n"+
		"B4\tcarol@example.org\t0\nS4\t"+tok+"\topenpgp:carol\nC4\n"+
		"B5\t"+alice+"\t0\nS5\tpriv/"+guid+"/messagenew\t\nC5\n"+
		"B6\t"+alice+"\t0\nS6\tpriv/"+guid+"/messagenew\t\nC6\n", 10)
	if want := []string{"O1", "O2", "O3", "Oopenpgp:alice1", "Oopenpgp:bob1", "Oopenpgp:bob1", "O", "O4", "O5", "O6"}; !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
	if due, ok, err := store.NextPushDue(ctx); err != nil || !ok || !due.Equal(now) {
		t.Errorf("queued: %v %v %v", due, ok, err)
	}
	ps, err := store.ClaimPushes(ctx, now, time.Minute, 10)
	if err != nil || len(ps) != 1 || ps[0].Token != "openpgp:alice1" {
		t.Errorf("claimed %+v, %v; want alice's one token once", ps, err)
	}
}

// An IMAP client's SETMETADATA INBOX (/private/messagenew "") reaches the
// dict as the same key LMTP's Lua sets: only LMTP's dict name may queue.
// From another it is dropped, and the commit answered OK, so that Dovecot
// logs no error.
func TestMessageNewOnlyFromDelivery(t *testing.T) {
	st := newFake()
	st.tokens[alice] = []string{"openpgp:tok"}
	s := newService(st, nil)
	sock := serve(t, s)
	for _, hello := range []string{hello23, hello24} {
		got := session(t, sock, hello+"B1\t"+alice+"\t0\nS1\tpriv/"+guid+"/messagenew\t\nC1\n", 1)
		if got[0] != "O1" {
			t.Errorf("%q: messagenew from IMAP's dict name: %q, want O1 (dropped)", hello, got)
		}
	}
	st.mu.Lock()
	n := st.queued[alice]
	st.mu.Unlock()
	if n != 0 {
		t.Errorf("queued %d pushes from IMAP", n)
	}
	if d := testutil.ToFloat64(s.Metrics.dropped.WithLabelValues(dropMessageNew)); d != 2 {
		t.Errorf("dropped messagenew counted %v, want 2", d)
	}
	if got := session(t, sock, helloLMTP+"B1\t"+alice+"\t0\nS1\tpriv/"+guid+"/messagenew\t\nC1\n", 1); got[0] != "O1" {
		t.Errorf("messagenew from LMTP: %q", got)
	}
	st.mu.Lock()
	n = st.queued[alice]
	st.mu.Unlock()
	if n != 1 {
		t.Errorf("queued %d pushes from LMTP, want 1", n)
	}
}

// What is dropped is logged at Debug only: no line above it, whatever a
// client sends, so that no account can fill the log.
func TestDroppedQuiet(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	st := newFake()
	st.missing[bob] = true
	sock := serve(t, newService(st, log))
	tok := "priv/" + guid + "/devicetoken"
	got := session(t, sock, hello24+
		"B1\t"+alice+"\t0\nS1\tpriv/"+guid+"/comment\tx\nC1\n"+
		"B2\t"+alice+"\t0\nA2\t"+tok+"\t1\nC2\n"+
		"B3\t"+alice+"\t0\nS3\t"+tok+"\tbad token\nC3\n"+
		"B4\t"+alice+"\t0\nS4\tpriv/"+guid+"/messagenew\t\nC4\n"+
		"B5\t"+alice+"\t0\nU5\t"+tok+"\nC5\n"+
		"B6\t"+bob+"\t0\nS6\t"+tok+"\tgood\nC6\n", 6)
	if want := []string{"O1", "O2", "O3", "O4", "O5", "O6"}; !slices.Equal(got, want) {
		t.Errorf("replies %q, want %q", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if buf.Len() > 0 {
		t.Errorf("logged above Debug:\n%s", buf.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// When no TURN credential is left to issue, turn is not found, and for
// ExhaustedBackoff no lookup tries to issue one, server-wide: an account
// with a credential to hand out again still gets it.
func TestTurnExhausted(t *testing.T) {
	st := newFake()
	st.issue = func(string) (int64, error) { return 0, accounts.ErrTurnCredentialsExhausted }
	st.have = map[string]int64{bob: 1800000000}
	s := newService(st, nil)
	now := time.Date(2026, 11, 29, 18, 30, 0, 0, time.UTC)
	var mu sync.Mutex
	s.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	sock := serve(t, s)
	turn := "L" + server + "vendor/deltachat/turn\t"
	got := session(t, sock, hello24+turn+alice+"\n"+turn+alice+"\n"+turn+"carol@example.org\n"+turn+bob+"\n", 4)
	want := turncred.Value("chat.example.org", 3478, 1800000000, turncred.Password(secret, "1800000000"))
	if w := []string{"N", "N", "N", "O" + want}; !slices.Equal(got, w) {
		t.Errorf("exhausted: %q, want %q", got, w)
	}
	st.mu.Lock()
	if st.issued != 1 || st.read != 3 {
		t.Errorf("the store was asked to issue %d times, read %d; want 1 and 3 (one try a minute)", st.issued, st.read)
	}
	st.mu.Unlock()
	if n := testutil.ToFloat64(s.Metrics.turnExhausted); n != 3 {
		t.Errorf("turn_exhausted_total %v, want 3", n)
	}
	// A minute later it tries again, and issues when it can.
	mu.Lock()
	now = now.Add(ExhaustedBackoff)
	mu.Unlock()
	st.mu.Lock()
	st.issue = nil
	st.mu.Unlock()
	if got := session(t, sock, hello24+turn+alice+"\n", 1); got[0] != "O"+want {
		t.Errorf("after the backoff: %q", got)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.issued != 2 {
		t.Errorf("issued %d, want a second try after the backoff", st.issued)
	}
}
