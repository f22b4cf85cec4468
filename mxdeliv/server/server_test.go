package server

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Stop()
	os.Exit(code)
}

// testCA writes a self-signed certificate, PEM, to path.
func testCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestRunBothRoles: Run serves the receiver and, with lmtp_listen, the
// sender's LMTP socket beside it (their metrics on one registry), and
// both stop when ctx ends.
func TestRunBothRoles(t *testing.T) {
	dsn := pgtest.DSN(t)
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	testCA(t, ca)
	httpSock, lmtpSock := filepath.Join(dir, "http.sock"), filepath.Join(dir, "lmtp.sock")
	text := fmt.Sprintf(`
[mail]
domains = ["chat.example.org"]
[postgres]
dsn = %q
[milter]
verify_dkim = false
[mxdeliv]
listen = "unix:%s"
lmtp_socket = %q
lmtp_listen = %q
lmtp_listen_group = ""
hostname = "mx.chat.example.org"
ca_file = %q
`, dsn, httpSock, filepath.Join(dir, "dovecot-lmtp.sock"), lmtpSock, ca)
	path := filepath.Join(dir, "chatmail.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	common, err := config.Parse(text, "mxdeliv", &cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	env := &daemon.Env{ConfigPath: path, Config: common, Log: slog.New(slog.DiscardHandler), Registry: reg,
		Panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "panics_total"}), DrainTimeout: DrainTimeout}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, env, &cfg) }()

	var c net.Conn
	for end := time.Now().Add(20 * time.Second); ; {
		if c, err = net.Dial("unix", lmtpSock); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("Run: %v", err)
		default:
		}
		if time.Now().After(end) {
			t.Fatalf("the sender's socket: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "220 mx.chat.example.org ") {
		t.Errorf("greeting %q", l)
	}
	fmt.Fprintf(c, "LHLO mx.chat.example.org\r\n")
	if l, _ := r.ReadString('\n'); l != "250-mx.chat.example.org\r\n" {
		t.Errorf("LHLO %q", l)
	}

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", httpSock)
	}}}
	resp, err := hc.Get("http://mxdeliv/mxdeliv")
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d, want 405", resp.StatusCode)
	}
	hc.CloseIdleConnections()

	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	for _, n := range []string{"chatmail_mxdeliv_requests_total", "chatmail_mxdeliv_recipients_total", "chatmail_mxdeliv_message_size_bytes", "chatmail_mxdeliv_sent_message_size_bytes"} {
		if !names[n] {
			t.Errorf("no series %s", n)
		}
	}

	c.Close()
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

// TestRunBadCAFile: a ca_file without a certificate is a configuration
// error, before anything listens.
func TestRunBadCAFile(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.Listen = "unix:" + filepath.Join(dir, "http.sock")
	cfg.LMTPListen, cfg.Hostname, cfg.CAFile = filepath.Join(dir, "lmtp.sock"), "mx.chat.example.org", ca
	_, err := newSender(&cfg, &daemon.Env{Registry: prometheus.NewRegistry(), Log: slog.New(slog.DiscardHandler)})
	if !config.IsError(err) {
		t.Errorf("newSender with a bad ca_file: %v", err)
	}
}
