package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"chatmail.dev/integration/chatflow"
	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// noLogOn starts a stack that keeps a new install's default, No-Log on.
func noLogOn(a *[]string) { *a = append(*a, "--nolog", "on") }

// switchDelay is how long after chatmail-admin nolog every daemon has
// followed: within a second, and a margin for a loaded 2-core machine.
const switchDelay = 1500 * time.Millisecond

// TestNoLogWholeServer: real Delta Chat traffic (first logins that create
// accounts, SecureJoin, messages, a group, a 1 MB file, a refused
// cleartext message) on a stack with No-Log on leaves no trace of the
// users on disk outside their mail and their account rows: not in
// Postfix's or Dovecot's log (through chatmail-logd), not in our daemons'
// logs, not in PostgreSQL's log, not in Dovecot's index files once the
// mail is expunged. Meanwhile No-Log is switched off and on again while
// two other users chat, without restarting anything; while it is off,
// deliveries and logins are logged as usual.
func TestNoLogWholeServer(t *testing.T) {
	s := stack.Start(t, noLogOn)
	if out := s.Admin(t, "nolog", "status"); strings.TrimSpace(out) != "nolog on" {
		t.Fatalf("a new stack with --nolog on says %q", out)
	}
	logs := newLogWindows(t, s)

	// Phase 1, No-Log on: Alice, Bob and Carol.
	rpc := startDeltaChat(t)
	alice := newChatter(t, rpc, s, "Alice Liddell")
	bob := newChatter(t, rpc, s, "Bob Dylan")
	carol := newChatter(t, rpc, s, "Carol King")
	quiet := []*chatter{alice, bob, carol}
	bobChat, bobInAlice := secureJoin(t, alice, bob, 0)
	aliceChat := alice.oneToOne(t, bobInAlice)
	sendText(t, alice, aliceChat, bob, bobChat, secret("hi Bob"))
	sendText(t, bob, bobChat, alice, aliceChat, secret("hi Alice"))
	group, err := alice.Acc.CreateGroupChat(waitCtx(t), "Tea Party "+rand.Text()[:6])
	if err != nil {
		t.Fatal(err)
	}
	if err := alice.Acc.AddContactToChat(waitCtx(t), group, bobInAlice); err != nil {
		t.Fatal(err)
	}
	carolGroup, _ := secureJoin(t, alice, carol, group)
	text := secret("welcome, Bob and Carol")
	send(t, alice, group, deltachat.MessageData{Text: text})
	receive(t, bob, alice, 0, text)
	receive(t, carol, alice, carolGroup, text)
	file := filepath.Join(t.TempDir(), "upload.bin")
	content := make([]byte, 1<<20)
	rand.Read(content)
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatal(err)
	}
	text = secret("the file")
	send(t, alice, aliceChat, deltachat.MessageData{Text: text, File: file, FileName: "f.bin", ViewType: "File"})
	receive(t, bob, alice, bobChat, text)
	refusedID := rand.Text() + "@" + s.Domain
	clear := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: hello\r\nDate: %s\r\nMessage-ID: <%s>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nin the clear\r\n",
		alice.Addr, bob.Addr, time.Now().Format(time.RFC1123Z), refusedID)
	if code, _ := smtpCode(submit(s, alice.Addr, alice.Password, bob.Addr, clear)); code != 523 {
		t.Fatalf("cleartext submission: code %d, want 523", code)
	}

	// Phase 2: No-Log off while Dave and Erin start chatting; their chat
	// goes on while the switch is turned on again.
	logs.mark("off")
	if out := s.Admin(t, "nolog", "off"); strings.TrimSpace(out) != "nolog off" {
		t.Fatalf("nolog off said %q", out)
	}
	time.Sleep(switchDelay)
	logs.mark("off-settled")
	rpc2 := startDeltaChat(t)
	dave := newChatter(t, rpc2, s, "Dave Brubeck")
	erin := newChatter(t, rpc2, s, "Erin Brockovich")
	erinChat, erinInDave := secureJoin(t, dave, erin, 0)
	daveChat := dave.oneToOne(t, erinInDave)
	ctx, stopTraffic := context.WithCancel(waitCtx(t))
	defer stopTraffic()
	traffic := make(chan int, 1)
	var trafficErr error
	go func() {
		n := 0
		defer func() { traffic <- n }()
		for ctx.Err() == nil {
			text := fmt.Sprintf("ping %d", n)
			from, fromChat, to := dave, daveChat, erin
			if n%2 == 1 {
				from, fromChat, to = erin, erinChat, dave
			}
			if _, err := chatflow.Send(ctx, from.Profile, fromChat, deltachat.MessageData{Text: text}); err != nil {
				if ctx.Err() == nil {
					trafficErr = err
				}
				return
			}
			if _, err := to.Receive(ctx); err != nil {
				if ctx.Err() == nil {
					trafficErr = err
				}
				return
			}
			n++
		}
	}()
	time.Sleep(3 * time.Second)
	logs.mark("on")
	if out := s.Admin(t, "nolog", "on"); strings.TrimSpace(out) != "nolog on" {
		t.Fatalf("nolog on said %q", out)
	}
	time.Sleep(switchDelay)
	logs.mark("on-settled")

	// Phase 3, No-Log on, Dave and Erin still chatting: Alice and Bob again.
	sendText(t, bob, bobChat, alice, aliceChat, secret("still there?"))
	sendText(t, alice, aliceChat, bob, bobChat, secret("yes"))
	time.Sleep(2 * time.Second)
	stopTraffic()
	exchanged := <-traffic
	if trafficErr != nil {
		t.Fatalf("Dave and Erin's chat while No-Log was switched: %v", trafficErr)
	}
	if exchanged < 4 {
		t.Fatalf("Dave and Erin exchanged %d messages while No-Log was switched, want at least 4", exchanged)
	}
	t.Logf("Dave and Erin exchanged %d messages across the switches", exchanged)

	// While No-Log was off, deliveries and logins were logged as usual.
	offText := logs.between(t, "off-settled", "on")
	for _, u := range []*chatter{dave, erin} {
		if !regexp.MustCompile(`(?m)postfix/lmtp\[\d+\]: .*to=<` + regexp.QuoteMeta(u.Addr) + `>.*status=sent`).MatchString(offText[s.Env["LOGD_OUTPUT"]]) {
			t.Errorf("with No-Log off, chatmail-logd's output has no delivery to %s", u.Addr)
		}
		if !regexp.MustCompile(`(?m)imap-login: (?:Login|Logged in): user=<` + regexp.QuoteMeta(u.Addr) + `>`).MatchString(offText[s.Env["LOGD_OUTPUT"]]) {
			t.Errorf("with No-Log off, chatmail-logd's output has no login of %s", u.Addr)
		}
	}

	// The mail of Alice, Bob and Carol: its Message-IDs, then expunge it
	// all, as a client does once it has fetched it.
	for _, u := range []*chatter{alice, bob, carol, dave, erin} {
		if err := u.Acc.StopIO(waitCtx(t)); err != nil {
			t.Fatal(err)
		}
	}
	msgIDs := []string{refusedID}
	for _, u := range quiet {
		ids, _ := messageIDs(t, s, u.Addr)
		if len(ids) == 0 {
			t.Fatalf("no mail on the server for %s", u.Addr)
		}
		msgIDs = append(msgIDs, ids...)
		expungeAll(t, s, u.Addr, u.Password)
		if files := serverMail(t, s, u.Addr); len(files) != 0 {
			t.Fatalf("%s still has %d messages after the expunge", u.Addr, len(files))
		}
	}
	time.Sleep(500 * time.Millisecond) // the last log lines of the expunge

	// What the users of the No-Log phases must not be found by.
	var needles []string
	for _, u := range quiet {
		local, _, _ := strings.Cut(u.Addr, "@")
		needles = append(needles, local) // any form of the address
	}
	for _, id := range msgIDs {
		left, _, _ := strings.Cut(id, "@")
		needles = append(needles, left)
	}
	files := stackFiles(t, s)
	if len(files) < 10 {
		t.Fatalf("only %d files to look at in %s", len(files), s.Dir)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range needles {
			if i := bytes.Index(b, []byte(n)); i >= 0 {
				t.Errorf("%s names a user of the No-Log phases (%q): …%s…", f, n, around(b, i))
			}
		}
	}
	// Every log: during the No-Log phases, no client IP, no user of any
	// phase (Dave and Erin chatted through phase 3).
	all := append([]string{"127.0.0.1"}, needles...)
	for _, u := range []*chatter{dave, erin} {
		local, _, _ := strings.Cut(u.Addr, "@")
		all = append(all, local)
	}
	for _, w := range [][2]string{{"", "off"}, {"on-settled", ""}} {
		for path, text := range logs.between(t, w[0], w[1]) {
			for _, n := range all {
				if i := strings.Index(text, n); i >= 0 {
					t.Errorf("%s, written with No-Log on, names %q: …%s…", path, n, around([]byte(text), i))
				}
			}
		}
	}
	t.Logf("%d files and %d log files checked for %d names", len(files), len(logs.sizes[""]), len(all))
}

// around returns the bytes of b around index i, for an error message.
func around(b []byte, i int) string {
	return string(b[max(0, i-80):min(len(b), i+80)])
}

// logWindows remembers the sizes of the stack's log files at named
// moments, to read what was written between two of them.
type logWindows struct {
	s     *stack.Stack
	sizes map[string]map[string]int64 // mark → path → size
}

// logPaths are the stack's log files: its log directory and PostgreSQL's.
func (w *logWindows) logPaths(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(w.s.Env["LOG_DIR"], "*"))
	if err != nil {
		t.Fatal(err)
	}
	return append(paths, filepath.Join(w.s.Dir, "pg", "postgres.log"))
}

func newLogWindows(t *testing.T, s *stack.Stack) *logWindows {
	t.Helper()
	if s.Env["LOGD_OUTPUT"] == "" {
		t.Fatal("the stack has no LOGD_OUTPUT: chatmail-logd does not run")
	}
	w := &logWindows{s: s, sizes: map[string]map[string]int64{}}
	w.sizes[""] = map[string]int64{}
	for _, p := range w.logPaths(t) {
		w.sizes[""][p] = 0
	}
	return w
}

func (w *logWindows) mark(name string) {
	m := map[string]int64{}
	for p := range w.sizes[""] {
		if fi, err := os.Stat(p); err == nil {
			m[p] = fi.Size()
		}
	}
	w.sizes[name] = m
}

// between returns, per log file, what was written between two marks ("" is
// the start or, as the second mark, now). Files that appeared after the
// first mark are read from their start.
func (w *logWindows) between(t *testing.T, from, to string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range w.logPaths(t) {
		b, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		start, end := w.sizes[from][p], int64(len(b))
		if to != "" {
			e, ok := w.sizes[to][p]
			if !ok {
				continue
			}
			end = e
		}
		if start > end || end > int64(len(b)) {
			t.Fatalf("%s shrank between marks (rotated?)", p)
		}
		out[p] = string(b[start:end])
	}
	return out
}

// stackFiles returns every file the stack wrote that may not name a user:
// all of its directory but the mail files themselves (Maildir cur/, new/,
// tmp/), PostgreSQL's data directory (the account rows), the binaries, the
// configuration, the logs (checked by window) and, on Debian 13, the
// mounted tree (its written files are in tree/upper).
func stackFiles(t *testing.T, s *stack.Stack) []string {
	t.Helper()
	skip := map[string]bool{
		filepath.Join(s.Dir, "pg", "data"): true,
		filepath.Join(s.Dir, "bin"):        true,
		filepath.Join(s.Dir, "etc"):        true,
		filepath.Join(s.Dir, "tls"):        true,
		s.Env["LOG_DIR"]:                   true,
		// Debian 13: the overlay of the shared trixie tree; what the
		// servers write there lands in tree/upper, which is read.
		filepath.Join(s.Dir, "tree", "root"): true,
	}
	var files []string
	err := filepath.WalkDir(s.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skip[path] {
				return filepath.SkipDir
			}
			switch d.Name() {
			case "cur", "new", "tmp":
				if strings.HasPrefix(path, s.Env["MAILBOXES_DIR"]) {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if d.Type().IsRegular() && path != filepath.Join(s.Dir, "pg", "postgres.log") {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

var messageIDField = regexp.MustCompile(`(?im)^Message-ID:[ \t]*<([^>\r\n]+)>`)

// messageIDs returns the Message-IDs of the mail the server holds for
// addr, and the files that have none.
func messageIDs(t *testing.T, s *stack.Stack, addr string) (ids, without []string) {
	t.Helper()
	for _, f := range serverMail(t, s, addr) {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		header, _, _ := bytes.Cut(b, []byte("\r\n\r\n"))
		if m := messageIDField.FindSubmatch(header); m != nil {
			ids = append(ids, string(m[1]))
		} else {
			without = append(without, f)
		}
	}
	return ids, without
}

// expungeAll deletes every message of every mailbox of addr over IMAP.
func expungeAll(t *testing.T, s *stack.Stack, addr, pass string) {
	t.Helper()
	c, err := imapclient.DialInsecure(s.Addr("IMAP_PORT"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(addr, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	boxes, err := c.List("", "*", nil).Collect()
	if err != nil {
		t.Fatal(err)
	}
	for _, box := range boxes {
		sel, err := c.Select(box.Mailbox, nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		if sel.NumMessages == 0 {
			continue
		}
		all := imap.SeqSet{}
		all.AddRange(1, 0)
		if err := c.Store(all, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Flags: []imap.Flag{imap.FlagDeleted}, Silent: true}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Expunge().Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}
}
