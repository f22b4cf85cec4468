package server

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/metadata-proxy/metadict"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

// TestExampleIsDefaults: chatmail.toml.example shows the [metadata-proxy]
// defaults.
func TestExampleIsDefaults(t *testing.T) {
	if err := config.CheckExample("../../chatmail.toml.example", "metadata-proxy", DefaultConfig); err != nil {
		t.Error(err)
	}
}

func TestConfig(t *testing.T) {
	d := DefaultConfig()
	if err := d.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		key  string
		set  func(*Config)
		okay bool
	}{
		{"socket", func(c *Config) { c.Socket = "run/x.socket" }, false},
		{"metrics", func(c *Config) { c.Metrics = "0.0.0.0:9729" }, false},
		{"irohrelay", func(c *Config) { c.IrohRelay = "https://iroh.example.org" }, true},
		{"irohrelay", func(c *Config) { c.IrohRelay = "iroh.example.org" }, false},
		{"irohrelay", func(c *Config) { c.IrohRelay = "ftp://iroh.example.org" }, false},
		{"max_smtp_recipients", func(c *Config) { c.MaxSMTPRecipients = 0 }, false},
		{"appversions_file", func(c *Config) { c.AppVersionsFile = "appversions.json" }, false},
		{"push_gateway", func(c *Config) { c.PushGateway = "" }, true},
		{"push_gateway", func(c *Config) { c.PushGateway = "http://127.0.0.1:8080/notify" }, true},
		{"push_gateway", func(c *Config) { c.PushGateway = "notifications.delta.chat" }, false},
		{"push_give_up", func(c *Config) { c.PushGiveUp = 0 }, false},
		{"push_concurrency", func(c *Config) { c.PushConcurrency = 0 }, false},
		{"push_concurrency", func(c *Config) { c.PushConcurrency = 65 }, false},
		{"push_cooldown", func(c *Config) { c.PushCooldown = 0 }, true},
		{"push_cooldown", func(c *Config) { c.PushCooldown = -1 }, false},
		{"push_cooldown", func(c *Config) { c.PushCooldown = config.Duration(2 * time.Hour) }, false},
	} {
		cfg := DefaultConfig()
		c.set(&cfg)
		err := cfg.Validate()
		if (err == nil) != c.okay {
			t.Errorf("%s: %v, want ok=%v", c.key, err, c.okay)
		}
		if err != nil && !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: the error %q does not name the key", c.key, err)
		}
	}
}

// TestRun runs the daemon as main does, against a real PostgreSQL and a
// fake gateway: METADATA over the socket, a push on new mail, its retry
// surviving a restart, the drain.
func TestRun(t *testing.T) {
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	var mu sync.Mutex
	posts, code := []string{}, http.StatusServiceUnavailable
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		posts = append(posts, string(b))
		w.WriteHeader(code)
		mu.Unlock()
	}))
	defer gw.Close()
	sock := filepath.Join(dir, "metadata.socket")
	text := fmt.Sprintf(`
[mail]
domains = ["chat.example.org"]
[postgres]
dsn = %q
[turn]
secret_file = %q
[metadata-proxy]
socket = %q
push_gateway = %q
push_cooldown = "1s"
irohrelay = "https://chat.example.org"
`, dsn, filepath.Join(dir, "turn.secret"), sock, gw.URL+"/notify")
	cfg := DefaultConfig()
	common, err := config.Parse(text, "metadata-proxy", &cfg)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		reg := prometheus.NewRegistry()
		env := &daemon.Env{
			Config: common, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Registry: reg,
			Panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "panics_total"}), DrainTimeout: DrainTimeout,
		}
		done := make(chan error, 1)
		go func() { done <- Run(ctx, env, &cfg) }()
		return func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(DrainTimeout):
				t.Fatal("Run did not return")
			}
		}
	}
	stop := run()
	ctx := context.Background()
	store, err := accounts.Open(ctx, dsn, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	waitFor(t, "the migrations", func() bool { return store.Migrate(ctx) == nil })
	const alice = "alice@chat.example.org"
	key := accounts.TombstoneKey("a tombstone key of at least 32 bytes")
	if _, _, err := store.Create(ctx, accounts.New{Address: alice, PasswordHash: "{PLAIN}x", Tombstone: key.Hash(alice)}); err != nil {
		t.Fatal(err)
	}
	const server = "shared/58b5981328400c6b5003000083ecc375/vendor/vendor.dovecot/pvt/server/vendor/deltachat/"
	var got []string
	waitFor(t, "the socket and the store", func() bool {
		got = session(t, sock, "H4\t0\t0\t\tmetadata\nL"+server+"turn\t"+alice+"\n", 1)
		return got != nil && strings.HasPrefix(got[0], "O")
	})
	if !strings.HasPrefix(got[0], "Ochat.example.org:3478:") {
		t.Errorf("turn %q", got[0])
	}
	got = session(t, sock, "H4\t0\t0\t\tmetadata\n"+
		"L"+server+"maxsmtprecipients\t"+alice+"\n"+
		"L"+server+"irohrelay\t"+alice+"\n"+
		"B1\t"+alice+"\t0\nS1\tpriv/58b5981328400c6b5003000083ecc375/devicetoken\topenpgp:tok\nC1\n", 3)
	if want := []string{"O50", "Ohttps://chat.example.org", "O1"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("replies %q, want %q", got, want)
	}
	// New mail, as LMTP announces it, on its own dict name.
	got = session(t, sock, "H4\t0\t0\t\t"+metadict.DeliveryDictName+"\n"+
		"B2\t"+alice+"\t0\nS2\tpriv/58b5981328400c6b5003000083ecc375/messagenew\t\nC2\n", 1)
	if want := []string{"O2"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("replies %q, want %q", got, want)
	}
	nposts := func() int { mu.Lock(); defer mu.Unlock(); return len(posts) }
	waitFor(t, "a POST", func() bool { return nposts() > 0 })
	stop()
	if _, ok, _ := store.NextPushDue(ctx); !ok {
		t.Fatal("the failed notification is not queued after the stop")
	}
	// The gateway is back; the retry is made due now rather than in 8 s.
	mu.Lock()
	code = http.StatusOK
	mu.Unlock()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `UPDATE push_queue SET next_attempt = now()`); err != nil {
		t.Fatal(err)
	}
	stop = run()
	defer stop()
	waitFor(t, "delivery after the restart, and the end of its cooldown", func() bool {
		_, ok, err := store.NextPushDue(ctx)
		return err == nil && !ok
	})
	mu.Lock()
	defer mu.Unlock()
	if posts[len(posts)-1] != "openpgp:tok" {
		t.Errorf("posts %q", posts)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// session sends req on a new connection and reads n lines; nil when the
// socket is not there yet.
func session(t *testing.T, sock, req string, n int) []string {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, req)
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
