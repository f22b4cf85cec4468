// Command chatmail-demo shows the chatmail server at work: it brings up a
// private server (scripts/stack) in a fixed directory, has two real Delta
// Chat clients create accounts, meet by SecureJoin, exchange messages and
// get the server's TURN relay for calls, then shows what the server holds
// about them: account rows, ciphertext
// only, and no log line naming them under No-Log. The server keeps running
// afterwards, so that a Delta Chat app can be pointed at it.
//
//	go run ./cmd/chatmail-demo [-dir /var/tmp/chatmail-demo]
//
// It must run as root, like scripts/stack. A server already running in the
// directory is reused.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"chatmail.dev/integration/chatflow"
	"chatmail.dev/integration/deltachat"
	"chatmail.dev/integration/stack"
)

// wait bounds each wait for the clients or the server.
const wait = 60 * time.Second

func main() {
	dir := flag.String("dir", "/var/tmp/chatmail-demo", "directory of the demo server; reused if a server runs there")
	flag.Parse()
	if err := run(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-demo:", err)
		os.Exit(1)
	}
}

func run(dir string) error {
	began := time.Now()
	section("The server")
	s, err := ensureStack(dir)
	if err != nil {
		return err
	}
	describeStack(s)

	// On Ctrl-C the waits end, and close still puts No-Log back.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := newDemo(ctx, s)
	if err != nil {
		return err
	}
	defer d.close()
	if err := d.talk(); err != nil {
		if ctx.Err() != nil {
			return errors.New("interrupted")
		}
		return fmt.Errorf("%w (client warnings are in %s)", err, d.clientLog)
	}
	if err := d.call(); err != nil {
		return err
	}
	if err := d.showServerView(); err != nil {
		return err
	}
	section("Done")
	say("The demo took %.1f s.", time.Since(began).Seconds())
	printInstructions(s)
	return nil
}

// say prints one line of the story.
func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func section(title string) { fmt.Printf("\n== %s ==\n", title) }

func indent(text string) {
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		fmt.Println("    " + line)
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// --- the server ---

// ensureStack reuses a server running in dir, cleans up a stopped one, or
// starts a new one with scripts/stack.
func ensureStack(dir string) (*stack.Stack, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	envFile := filepath.Join(dir, "stack.env")
	if _, err := os.Stat(envFile); err == nil {
		s, err := readStack(dir)
		if err != nil {
			return nil, err
		}
		if alive(s) {
			say("Reusing the server already running in %s (stop it with: scripts/stack down %s).", dir, dir)
			return s, nil
		}
		say("%s holds a server that no longer answers; cleaning it up first.", dir)
		if err := script("down", dir); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	say("Starting PostgreSQL, Dovecot, Postfix and the chatmail daemons in %s ...", dir)
	t := time.Now()
	if err := script("up", dir); err != nil {
		return nil, err
	}
	say("The server is up after %s.", seconds(time.Since(t)))
	return readStack(dir)
}

func readStack(dir string) (*stack.Stack, error) {
	env, err := stack.ReadEnv(filepath.Join(dir, "stack.env"))
	if err != nil {
		return nil, err
	}
	for _, key := range []string{"MAIL_DOMAIN", "IMAPS_PORT", "SMTPS_PORT", "ADMIN", "MAILBOXES_DIR", "LOG_DIR"} {
		if env[key] == "" {
			return nil, fmt.Errorf("%s/stack.env has no %s", dir, key)
		}
	}
	return &stack.Stack{Dir: dir, Env: env, Domain: env["MAIL_DOMAIN"]}, nil
}

// alive reports whether the server's IMAPS and SMTPS ports accept connections.
func alive(s *stack.Stack) bool {
	for _, key := range []string{"IMAPS_PORT", "SMTPS_PORT"} {
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", s.Env[key]), time.Second)
		if err != nil {
			return false
		}
		c.Close()
	}
	return true
}

// script runs scripts/stack with its output on our stderr. It builds the
// daemons itself unless STACK_BIN names a directory of built ones.
func script(args ...string) error {
	cmd := exec.Command(filepath.Join(stack.Repo(), "scripts", "stack"), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scripts/stack %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func describeStack(s *stack.Stack) {
	say("Mail domain %s on 127.0.0.1: IMAPS port %s, SMTPS port %s (self-signed certificate).",
		s.Domain, s.Env["IMAPS_PORT"], s.Env["SMTPS_PORT"])
	if s.Env["MILTER_SOCKET"] != "" {
		say("chatmail-milter filters every message Postfix accepts (PGP-only).")
	}
}

// admin runs the admin CLI of the stack and returns its output.
func admin(s *stack.Stack, args ...string) (string, error) {
	f := strings.Fields(s.Env["ADMIN"])
	out, err := exec.Command(f[0], append(f[1:], args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("chatmail-admin %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// --- the clients ---

// client is one Delta Chat profile in the demo.
type client struct {
	name string // in the story; the profile's display name has " (demo)"
	*chatflow.Profile
}

// demo holds the clients and what the story needs to remember.
type demo struct {
	ctx          context.Context // cancelled by Ctrl-C
	s            *stack.Stack
	rpc          *deltachat.RPC
	accountsDir  string
	clientLog    string
	logFile      *os.File
	alice, bob   *client
	texts        []string // everything sent, which the server must not see
	noLogWasOn   bool
	noLogChanged bool             // the demo switched No-Log and has not put it back
	noLogFrom    map[string]int64 // log sizes when No-Log went on
}

func newDemo(ctx context.Context, s *stack.Stack) (*demo, error) {
	binary, err := findDeltaChat()
	if err != nil {
		return nil, err
	}
	accountsDir, err := os.MkdirTemp("", "chatmail-demo-clients")
	if err != nil {
		return nil, err
	}
	d := &demo{ctx: ctx, s: s, accountsDir: accountsDir, clientLog: filepath.Join(s.Env["LOG_DIR"], "demo-clients.log")}
	if d.logFile, err = os.Create(d.clientLog); err != nil {
		os.RemoveAll(accountsDir)
		return nil, err
	}
	ctx, cancel := d.waitCtx()
	defer cancel()
	d.rpc, err = deltachat.Start(ctx, deltachat.Options{Binary: binary, AccountsDir: accountsDir, Log: d.logFile})
	if err != nil {
		d.logFile.Close()
		os.RemoveAll(accountsDir)
		return nil, err
	}
	return d, nil
}

// findDeltaChat finds deltachat-rpc-server from the working directory, or
// else in the repository this program was built from.
func findDeltaChat() (string, error) {
	path, err := deltachat.FindBinary()
	if err == nil {
		return path, nil
	}
	inRepo := filepath.Join(stack.Repo(), ".deltachat", "node_modules", "@deltachat",
		"stdio-rpc-server-linux-x64", "deltachat-rpc-server")
	if _, statErr := os.Stat(inRepo); statErr == nil {
		return inRepo, nil
	}
	return "", err
}

func (d *demo) close() {
	if d.noLogChanged {
		if err := d.setNoLog(d.noLogWasOn); err != nil {
			fmt.Fprintln(os.Stderr, "chatmail-demo:", err)
		}
	}
	if err := d.rpc.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-demo:", err)
	}
	if err := d.logFile.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-demo:", err)
	}
	if err := os.RemoveAll(d.accountsDir); err != nil {
		fmt.Fprintln(os.Stderr, "chatmail-demo:", err)
	}
}

// waitCtx bounds one wait; Ctrl-C ends it early.
func (d *demo) waitCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(d.ctx, wait)
}

// newClient creates a profile with fresh credentials, as an app does, and
// configures it; the server creates the account at the first login.
func (d *demo) newClient(name string) (*client, error) {
	ctx, cancel := d.waitCtx()
	defer cancel()
	// The display name travels inside the encryption only.
	d.texts = append(d.texts, name+" (demo)")
	t := time.Now()
	p, err := chatflow.NewProfile(ctx, d.rpc, d.s, name+" (demo)")
	if err != nil {
		return nil, err
	}
	say("%s's app picked the address %s and a 22-character password; logging in created the account (%s).",
		name, p.Addr, seconds(time.Since(t)))
	return &client{name: name, Profile: p}, nil
}

// talk is the story: accounts, SecureJoin and messages, with No-Log
// switched on after the first account.
func (d *demo) talk() error {
	section("Two Delta Chat clients")
	status, err := admin(d.s, "nolog", "status")
	if err != nil {
		return err
	}
	d.noLogWasOn = strings.TrimSpace(status) == "nolog on"
	if err := d.setNoLog(false); err != nil {
		return err
	}
	logFrom, err := d.logSizes()
	if err != nil {
		return err
	}
	if d.alice, err = d.newClient("Alice"); err != nil {
		return err
	}
	if err := d.showLog("With No-Log off, doveauth wrote", logFrom["doveauth.log"]); err != nil {
		return err
	}

	if err := d.setNoLog(true); err != nil {
		return err
	}
	if d.noLogFrom, err = d.logSizes(); err != nil {
		return err
	}
	if d.bob, err = d.newClient("Bob"); err != nil {
		return err
	}
	if err := d.secureJoin(d.alice, d.bob); err != nil {
		return err
	}
	return d.exchange()
}

// setNoLog switches No-Log and waits until the daemons have seen it (they
// check the switch every second).
func (d *demo) setNoLog(on bool) error {
	arg := map[bool]string{true: "on", false: "off"}[on]
	out, err := admin(d.s, "nolog", arg)
	if err != nil {
		return err
	}
	say("chatmail-admin nolog %s: %s", arg, strings.TrimSpace(out))
	d.noLogChanged = on != d.noLogWasOn
	time.Sleep(1500 * time.Millisecond)
	return nil
}

func (d *demo) logPath(name string) string { return filepath.Join(d.s.Env["LOG_DIR"], name) }

// serverLogs are the logs No-Log covers: this repository's daemons', and
// Postfix's and Dovecot's, which chatmail-logd writes.
func (d *demo) serverLogs() []string {
	logs := []string{"doveauth.log", filepath.Base(d.s.Env["LOGD_OUTPUT"])}
	if d.s.Env["MILTER_SOCKET"] != "" {
		logs = append(logs, "milter.log")
	}
	if d.s.Env["METADATA_SOCKET"] != "" {
		logs = append(logs, "metadata.log")
	}
	if d.s.Env["TURN_PORT"] != "" {
		logs = append(logs, "turnd.log")
	}
	return logs
}

// logSizes returns the current size of each log that the demo looks at.
func (d *demo) logSizes() (map[string]int64, error) {
	sizes := map[string]int64{}
	for _, name := range d.serverLogs() {
		fi, err := os.Stat(d.logPath(name))
		if err != nil {
			return nil, err
		}
		sizes[name] = fi.Size()
	}
	return sizes, nil
}

// logSince returns the lines of a log file after offset.
func logSince(path string, offset int64) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return nil, err
	}
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines, sc.Err()
}

func (d *demo) showLog(title string, offset int64) error {
	lines, err := logSince(d.logPath("doveauth.log"), offset)
	if err != nil {
		return err
	}
	say("%s %s:", title, plural(len(lines), "line"))
	indent(strings.Join(lines, "\n"))
	return nil
}

// secureJoin has joiner scan inviter's QR code and waits for both sides.
func (d *demo) secureJoin(inviter, joiner *client) error {
	ctx, cancel := d.waitCtx()
	defer cancel()
	qr, err := inviter.Acc.SecureJoinQR(ctx, 0)
	if err != nil {
		return err
	}
	say("%s shows an invite QR code: %.40s...", inviter.name, qr)
	t := time.Now()
	if _, err := chatflow.JoinByQR(ctx, inviter.Profile, joiner.Profile, qr); err != nil {
		return err
	}
	say("%s scanned it; SecureJoin finished on both sides after %s. They now hold each other's keys.",
		joiner.name, seconds(time.Since(t)))
	return nil
}

// chatWith returns from's one-to-one chat with the contact of addr.
func chatWith(ctx context.Context, from *client, addr string) (uint32, error) {
	contactID, ok, err := from.Acc.LookupContactID(ctx, addr)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("%s has no contact %s", from.name, addr)
	}
	return from.Acc.CreateChatByContactID(ctx, contactID)
}

// exchange sends a few messages both ways, one with a 1 MB file.
func (d *demo) exchange() error {
	section("Messages")
	a, b := d.alice, d.bob
	file, content, err := randomFile(d.accountsDir, 1<<20)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(content)
	// Sent in the clear, the file would show as its base64 body.
	d.texts = append(d.texts, "holiday-photos.bin", base64.StdEncoding.EncodeToString(content[:48]))
	steps := []struct {
		from, to *client
		msg      deltachat.MessageData
	}{
		{a, b, deltachat.MessageData{Text: "Hi Bob! This is Alice, on our own chatmail server."}},
		{b, a, deltachat.MessageData{Text: "Hi Alice, got it. Only the two of us can read this."}},
		{a, b, deltachat.MessageData{Text: "Here are the holiday photos.", File: file, FileName: "holiday-photos.bin"}},
		{b, a, deltachat.MessageData{Text: "Thanks, all there!"}},
	}
	for _, st := range steps {
		got, took, err := d.sendAndReceive(st.from, st.to, st.msg)
		if err != nil {
			return err
		}
		if err := report(st.from, st.to, st.msg, got, took, sum); err != nil {
			return err
		}
		d.texts = append(d.texts, st.msg.Text)
	}
	return nil
}

// randomFile writes n random bytes to a file in dir and returns its path
// and content.
func randomFile(dir string, n int) (string, []byte, error) {
	b := make([]byte, n)
	rand.Read(b)
	path := filepath.Join(dir, "holiday-photos.bin")
	return path, b, os.WriteFile(path, b, 0o600)
}

// sendAndReceive sends msg, waits until the server has taken it and to has
// it in full; it returns to's copy and how long that took.
func (d *demo) sendAndReceive(from, to *client, msg deltachat.MessageData) (*deltachat.Message, time.Duration, error) {
	ctx, cancel := d.waitCtx()
	defer cancel()
	chatID, err := chatWith(ctx, from, to.Addr)
	if err != nil {
		return nil, 0, err
	}
	t := time.Now()
	if _, err := chatflow.Send(ctx, from.Profile, chatID, msg); err != nil {
		return nil, 0, err
	}
	got, err := to.Receive(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("%s waiting for %q: %w", to.name, msg.Text, err)
	}
	return got, time.Since(t), nil
}

// report prints what the receiver sees and fails if it is not what was
// sent, encrypted.
func report(from, to *client, sent deltachat.MessageData, got *deltachat.Message, took time.Duration, sum [32]byte) error {
	what := fmt.Sprintf("%q", sent.Text)
	if sent.File != "" {
		what += fmt.Sprintf(" with %s (%d bytes)", sent.FileName, got.FileBytes)
	}
	if got.Text != sent.Text {
		return fmt.Errorf("%s sent %q, %s received %q", from.name, sent.Text, to.name, got.Text)
	}
	if !got.ShowPadlock {
		return fmt.Errorf("%s received %q without a padlock", to.name, got.Text)
	}
	say("%-5s -> %-5s %s", from.name, to.name, what)
	say("               arrived after %s, shown with a padlock (end-to-end encrypted)", seconds(took))
	if sent.File == "" {
		return nil
	}
	b, err := os.ReadFile(got.File)
	if err != nil {
		return err
	}
	if sha256.Sum256(b) != sum || got.FileName != sent.FileName {
		return fmt.Errorf("%s got %s with SHA-256 %x, want %s with %x", to.name, got.FileName, sha256.Sum256(b), sent.FileName, sum)
	}
	say("               same size and SHA-256 as sent (%x...)", sum[:8])
	return nil
}

// --- what the server holds ---

func (d *demo) showServerView() error {
	section("What the server holds about Alice and Bob")
	if err := d.showAccounts(); err != nil {
		return err
	}
	if err := d.showMail(); err != nil {
		return err
	}
	return d.showNoLog()
}

// showAccounts prints the admin CLI's rows for the two users.
func (d *demo) showAccounts() error {
	out, err := admin(d.s, "list")
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	var rows []string
	for i, line := range lines {
		if i == 0 || strings.Contains(line, d.alice.Addr) || strings.Contains(line, d.bob.Addr) {
			rows = append(rows, line)
		}
	}
	say("Account rows (chatmail-admin list; %d other accounts not shown):", len(lines)-len(rows))
	indent(strings.Join(rows, "\n"))
	return nil
}

// showMail checks that every stored message is PGP/MIME ciphertext without
// any of the texts sent, and prints the start of one.
func (d *demo) showMail() error {
	say("Mail on disk (Dovecot Maildir under %s):", d.s.Env["MAILBOXES_DIR"])
	var sample string
	for _, c := range []*client{d.alice, d.bob} {
		files, err := chatflow.MailFiles(d.s, c.Addr)
		if err != nil {
			return err
		}
		if len(files) == 0 {
			return fmt.Errorf("the server holds no mail for %s", c.Addr)
		}
		var total int64
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			if err := d.checkCiphertext(f, string(b)); err != nil {
				return err
			}
			total += int64(len(b))
			if sample == "" || len(b) < len(sample) {
				sample = string(b)
			}
		}
		say("  %s: %d messages, %d bytes, every one PGP/MIME ciphertext; none holds a text or name sent.",
			c.Addr, len(files), total)
	}
	say("The start of the smallest one:")
	indent(excerpt(sample))
	return nil
}

func (d *demo) checkCiphertext(path, mail string) error {
	if !strings.Contains(mail, "multipart/encrypted") || !strings.Contains(mail, "-----BEGIN PGP MESSAGE-----") {
		return fmt.Errorf("%s is not PGP/MIME", path)
	}
	for _, text := range d.texts {
		if strings.Contains(mail, text) {
			return fmt.Errorf("%s holds %q in the clear", path, text)
		}
	}
	return nil
}

// excerpt returns the headers of a message and its body up to two lines
// after the start of the PGP armor.
func excerpt(mail string) string {
	lines := strings.Split(strings.ReplaceAll(mail, "\r\n", "\n"), "\n")
	var out []string
	for i, line := range lines {
		out = append(out, line)
		if strings.HasPrefix(line, "-----BEGIN PGP MESSAGE-----") {
			end := min(i+3, len(lines))
			out = append(out, lines[i+1:end]...)
			out = append(out, fmt.Sprintf("[... %d more lines ...]", len(lines)-end))
			break
		}
	}
	return strings.Join(out, "\n")
}

// showNoLog prints what the server logged while No-Log was on, and puts
// the switch back as it was before the demo.
func (d *demo) showNoLog() error {
	say("While No-Log was on (Bob's account creation, SecureJoin, all messages, the call's relay):")
	for _, name := range d.serverLogs() {
		lines, err := logSince(d.logPath(name), d.noLogFrom[name])
		if err != nil {
			return err
		}
		naming := d.naming(lines)
		say("  %s got %s, %d of them naming Alice or Bob.", name, plural(len(lines), "line"), naming)
		if len(lines) > 0 {
			indent(strings.Join(lines, "\n"))
		}
		if naming > 0 {
			return fmt.Errorf("%s names a user under No-Log", name)
		}
	}
	return d.setNoLog(d.noLogWasOn)
}

// naming counts the lines that name Alice or Bob.
func (d *demo) naming(lines []string) int {
	n := 0
	for _, line := range lines {
		if strings.Contains(line, d.alice.Addr) || strings.Contains(line, d.bob.Addr) {
			n++
		}
	}
	return n
}

// --- how to go on ---

func printInstructions(s *stack.Stack) {
	say("The server keeps running. To try it with a Delta Chat app on this machine:")
	say("  address   any 9 characters [a-z0-9] @%s, e.g. %s@%s", s.Domain, chatflow.NewLocalpart(), s.Domain)
	say("  password  9 characters or more (the first login creates the account)")
	say("  advanced  IMAP server 127.0.0.1, port %s, security SSL/TLS", s.Env["IMAPS_PORT"])
	say("            SMTP server 127.0.0.1, port %s, security SSL/TLS", s.Env["SMTPS_PORT"])
	say("            certificate checks: accept invalid certificates")
	say("Accounts:   %s list", s.Env["ADMIN"])
	say("Logs:       %s", s.Env["LOG_DIR"])
	say("Stop it:    %s down %s", filepath.Join(stack.Repo(), "scripts", "stack"), s.Dir)
}
