package mailpolicy

import (
	"bufio"
	"bytes"
	"log/slog"
	"mime"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"chatmail.dev/sidecar/config"
)

// clientsDir holds what real Delta Chat clients submitted, captured by
// integration/cmd/chatmail-capture; see its README.md.
const clientsDir = "../testdata/clients"

// remoteDomain is the domain of the engine that judges the fixtures as
// incoming mail: the clients' own domain is then a remote one.
const remoteDomain = "other.example"

// clientEngine returns an engine serving domains, without DKIM
// verification: the fixtures are unsigned, as clients submit them.
func clientEngine(t *testing.T, domains ...string) *Engine {
	t.Helper()
	cfg := Defaults()
	cfg.VerifyDKIM = false
	common := config.Defaults()
	common.Mail.Domains = domains
	e, err := NewEngine(&common, &cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e.SetLookup(nil)
	return e
}

// clientFixture is one captured message and what the milter must make of it.
type clientFixture struct {
	name   string // dc-<version>/<shape>.eml
	raw    []byte
	sender string // the From address, which submitted it
	want   Reason
}

func loadClientFixtures(t *testing.T) []clientFixture {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(clientsDir, "dc-*", "*.eml"))
	if err != nil {
		t.Fatal(err)
	}
	versions := map[string]bool{}
	var out []clientFixture
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, err := filepath.Rel(clientsDir, p)
		if err != nil {
			t.Fatal(err)
		}
		versions[filepath.Dir(rel)] = true
		msg, err := mail.ReadMessage(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		from, err := mail.ParseAddress(msg.Header.Get("From"))
		if err != nil {
			t.Fatalf("%s: From: %v", rel, err)
		}
		mt, _, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
		if err != nil {
			t.Fatalf("%s: Content-Type: %v", rel, err)
		}
		// What the client meant: encrypted mail, or one of the Secure-Join
		// requests it sends in the clear. Any other cleartext would be a
		// capture gone wrong.
		want := ReasonEncrypted
		if mt != "multipart/encrypted" {
			sj := msg.Header.Get("Secure-Join")
			if sj != "vc-request" && sj != "vg-request" {
				t.Fatalf("%s: cleartext %s with Secure-Join %q: not a shape a client sends", rel, mt, sj)
			}
			want = ReasonSecureJoin
		}
		out = append(out, clientFixture{name: rel, raw: raw, sender: from.Address, want: want})
	}
	// Guard against a test that passes because it found nothing.
	if len(versions) < 3 || len(out) < 40 {
		t.Fatalf("found %d fixtures of %d client versions under %s, want the committed capture (40+, 3+ versions)", len(out), len(versions), clientsDir)
	}
	return out
}

// TestClientsAccepted: every message a real Delta Chat client submitted
// is accepted, for the expected reason, both when its sender submits it
// (outgoing) and when it arrives from the sender's server (incoming).
func TestClientsAccepted(t *testing.T) {
	for _, f := range loadClientFixtures(t) {
		domain := f.sender[strings.LastIndexByte(f.sender, '@')+1:]
		t.Run(f.name+"/out", func(t *testing.T) {
			// Another user of the same server, as for most of the captures.
			env := envelope{f.sender, f.sender, []string{"recipient0@" + domain}}
			wantVerdict(t, run(t, clientEngine(t, domain), env, f.raw), Outgoing, f.want)
		})
		t.Run(f.name+"/in", func(t *testing.T) {
			env := envelope{"", f.sender, []string{"recipient0@" + remoteDomain}}
			wantVerdict(t, run(t, clientEngine(t, remoteDomain), env, f.raw), Incoming, f.want)
		})
	}
}

func wantVerdict(t *testing.T, v *Verdict, dir Direction, want Reason) {
	t.Helper()
	if v == nil {
		t.Fatal("no verdict")
	}
	if v.Direction != dir || v.Reply.Code != 250 || v.Reason != want {
		t.Errorf("verdict %s %s %d %q, want %s accepted (250) as %s", v.Direction, v.Reason, v.Reply.Code, v.Reply.Text, dir, want)
	}
	// Delta Chat writes only fields the header policy keeps: it may
	// rewrite one (a display name, the Subject), never remove one.
	for _, c := range v.Changes {
		if c.Value == "" {
			t.Errorf("the header policy removes %s[%d] that the client wrote", c.Name, c.Index)
		}
	}
}

// TestClientsRefusedWhenAltered: the same messages lose their pass once
// they are no longer what a client sends, so TestClientsAccepted cannot
// pass by accepting everything.
func TestClientsRefusedWhenAltered(t *testing.T) {
	for _, f := range loadClientFixtures(t) {
		domain := f.sender[strings.LastIndexByte(f.sender, '@')+1:]
		t.Run(f.name, func(t *testing.T) {
			// The body replaced by cleartext: headers stay the client's.
			head, _, ok := bytes.Cut(f.raw, []byte("\r\n\r\n"))
			if !ok {
				head, _, _ = bytes.Cut(f.raw, []byte("\n\n"))
			}
			var b bytes.Buffer
			inCT := false // in the Content-Type field, which may be folded
			for line := range strings.SplitSeq(strings.ReplaceAll(string(head), "\r\n", "\n"), "\n") {
				if strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
					if inCT {
						continue
					}
				} else if inCT = strings.HasPrefix(strings.ToLower(line), "content-type:"); inCT {
					line = "Content-Type: text/plain; charset=utf-8"
				}
				b.WriteString(line + "\r\n")
			}
			b.WriteString("\r\nhello in the clear\r\n")
			env := envelope{f.sender, f.sender, []string{"recipient0@" + domain}}
			v := run(t, clientEngine(t, domain), env, b.Bytes())
			if v == nil || v.Reply.Code != 523 {
				t.Errorf("altered to cleartext: verdict %+v, want 523", v)
			}
		})
	}
}
