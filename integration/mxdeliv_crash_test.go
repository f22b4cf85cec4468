package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"chatmail.dev/integration/stack"
)

// The load and the kills of TestMxdelivKilledMidTransaction.
const (
	// crashPosters POST at once, each one message after the other, as
	// many senders do; the receiver takes 16 at a time (max_concurrent).
	crashPosters = 8
	// crashPause is each poster's pause after an answer: a steady load
	// that leaves the 2-core machine some room for other tests.
	crashPause = 10 * time.Millisecond
	// crashRetryPause is its pause after a failure: a receiver that is
	// down refuses at once, and the posters must not spin.
	crashRetryPause = 100 * time.Millisecond
	// Each poster sends to two accounts of its own, so that LMTP can be
	// cut between the replies of one transaction. Of their own: an LMTP
	// process killed right after it created a mailbox's
	// dovecot-uidlist.lock, before it wrote its pid there, leaves a lock
	// that Dovecot takes for stale only after two minutes; meanwhile
	// every delivery to that mailbox waits, and the posts of its poster
	// with it.
	crashRcptsPerPoster = 2
	// crashLMTPPhase is how long Dovecot's LMTP processes are killed: a
	// round every crashLMTPKillEvery, at most crashLMTPKillsPerRound
	// each. Dovecot's master throttles a service (starts no processes of
	// it for seconds) whose processes fail more than 10 times within one
	// second before any exited well (Dovecot 2.3's lmtp processes live
	// long), or one that fails before it said it is up: only processes
	// that serve a connection are killed.
	crashLMTPPhase         = 9 * time.Second
	crashLMTPKillEvery     = 1100 * time.Millisecond
	crashLMTPKillsPerRound = 8
	// crashMxdelivKills: how often chatmail-mxdeliv is killed and started
	// again.
	crashMxdelivKills = 3
	// crashServeFor is how long it serves after it is back, before it is
	// killed again.
	crashServeFor = time.Second
	// crashBackWithin bounds the wait for the first acknowledgement after
	// a kill.
	crashBackWithin = 20 * time.Second
	// crashSettleFor is how long Dovecot's lmtp may take after the load
	// to end its transactions.
	crashSettleFor = 5 * time.Second
	// crashPostTimeout bounds one POST: a hung receiver shows as failed
	// posts, not as a hung test.
	crashPostTimeout = 20 * time.Second
)

// TestMxdelivKilledMidTransaction: posters POST DKIM-signed PGP/MIME mail
// (small, and 420 KB, which the receiver spools to a file) to the stack's
// /mxdeliv over HTTPS without a pause, each message with a Message-ID of
// its own to two accounts, and record which were acknowledged (200 "250
// OK"). Meanwhile, first Dovecot's LMTP processes (the stack's only, the
// children of its Dovecot master) are killed with SIGKILL round after
// round, then chatmail-mxdeliv itself is, and started again each time.
// The kills hit transactions (posts in flight at a kill fail: 503 from a
// cut LMTP, no answer from a killed receiver), posts are acknowledged
// after each, and at the end every acknowledged message is in the
// Maildir of each of its recipients exactly once, and no message at all
// is in a Maildir twice (a message that was not acknowledged may be
// there once: LMTP may have stored it before the cut). Before the count,
// Dovecot's lmtp ends what it still does for the receiver; processes
// that still wait for a mailbox lock left by a killed one are killed.
func TestMxdelivKilledMidTransaction(t *testing.T) {
	s := stack.Start(t)
	for _, k := range []string{"MXDELIV_URL", "TLS_CERT", "DKIM_KEYS_DIR", "MAILBOXES_DIR"} {
		if s.Env[k] == "" {
			t.Fatalf("stack.env has no %s", k)
		}
	}
	// Mail from elsewhere.test, signed with the stack's own key, which the
	// rules (the milter's, read by the receiver) find under that domain
	// too, as in TestMilterMX.
	const from = "carol@elsewhere.test"
	copyFile(t, filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey."+s.Domain), filepath.Join(s.Env["DKIM_KEYS_DIR"], "chatmail._domainkey.elsewhere.test"))
	rcpts := newUsers(t, s, crashPosters*crashRcptsPerPoster)
	ld := startPostLoad(t, s, from, rcpts)
	t.Cleanup(ld.stop) // before the stack goes down; a no-op once stopped
	began := time.Now()
	ld.wantAckAfter(t, "warm-up", began)

	// 1. Dovecot's LMTP processes, killed in rounds, each while it serves
	// the receiver: in a transaction.
	master := dovecotMasterPID(t, s)
	listener := s.Env["MXDELIV_DOVECOT_LMTP"]
	var lmtpKills []time.Time
	killed := 0
	lmtpPhase := time.Now()
	for phase := lmtpPhase; time.Since(phase) < crashLMTPPhase; time.Sleep(crashLMTPKillEvery) {
		pids := awaitLMTPServing(t, master, listener)
		at := time.Now()
		for _, pid := range pids[:min(len(pids), crashLMTPKillsPerRound)] {
			if killLMTP(t, master, pid) {
				killed++
			}
		}
		lmtpKills = append(lmtpKills, at)
	}
	ld.wantAckAfter(t, "after the last kill of Dovecot's lmtp", lmtpKills[len(lmtpKills)-1])
	lmtpCut, lmtpCutInData := ld.cutAt(lmtpKills, lmtpCutReply)
	t.Logf("Dovecot's lmtp: %d processes killed in %d rounds; %d posts in flight at a kill answered 503 from a cut LMTP (%d during DATA); %s",
		killed, len(lmtpKills), lmtpCut, lmtpCutInData, ld.summary(lmtpPhase, time.Now()))
	if lmtpCut == 0 {
		t.Errorf("no post in flight at a kill of Dovecot's lmtp failed: the kills hit no transaction")
	}

	// 2. chatmail-mxdeliv, killed and started again, each time while it
	// holds an LMTP transaction.
	var mxdelivKills []time.Time
	mxdelivPhase := time.Now()
	for i := range crashMxdelivKills {
		pid := daemonPID(t, s, "mxdeliv", "chatmail-mxdeliv")
		awaitLMTPServing(t, master, listener)
		at := time.Now()
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatalf("kill -9 chatmail-mxdeliv %d: %v", pid, err)
		}
		mxdelivKills = append(mxdelivKills, at)
		awaitDeath(t, pid)
		s.Run(t, "restart", "mxdeliv")
		restarted := time.Now()
		if daemonPID(t, s, "mxdeliv", "chatmail-mxdeliv") == pid {
			t.Fatalf("after the restart chatmail-mxdeliv still has pid %d", pid)
		}
		ld.wantAckAfter(t, fmt.Sprintf("after kill %d of chatmail-mxdeliv", i+1), restarted)
		t.Logf("chatmail-mxdeliv kill %d: started again after %v", i+1, restarted.Sub(at).Round(time.Millisecond))
		time.Sleep(crashServeFor)
	}
	mxdelivCut, _ := ld.cutAt(mxdelivKills, noAnswer)
	t.Logf("chatmail-mxdeliv: killed %d times; %d posts in flight at a kill got no answer; %s",
		len(mxdelivKills), mxdelivCut, ld.summary(mxdelivPhase, time.Now()))
	if mxdelivCut < len(mxdelivKills) {
		t.Errorf("%d posts in flight at the %d kills of chatmail-mxdeliv got no answer, want one a kill at least", mxdelivCut, len(mxdelivKills))
	}
	if n := strings.Count(s.Log(t, "mail.log"), "throttling"); n > 0 {
		t.Logf("Dovecot's master throttled a service %d times (no new processes for a while)", n)
	}

	ld.stop()
	settleLMTP(t, s, master, listener)
	ld.wantDeliveredOnce(t, s)
	t.Logf("run: %v", time.Since(began).Round(time.Millisecond))
}

// postLoad is the posters' load on /mxdeliv and what became of each post.
type postLoad struct {
	s      *stack.Stack
	client *http.Client
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	posts []mxPost
}

// mxPost is one POST of one message: a message is posted once, never again.
type mxPost struct {
	id            string // the Message-ID, without brackets
	rcpts         []string
	started, done time.Time
	status        int    // 0: no answer
	reply         string // the answer's body, or the error
}

func (p mxPost) acked() bool { return p.status == http.StatusOK && p.reply == "250 OK" }

// lmtpCutReply: the receiver's answers to an LMTP connection that broke
// (receiver.ReplyDeliveryDown, receiver.ReplyPartial).
func lmtpCutReply(p mxPost) bool {
	return p.status == http.StatusServiceUnavailable &&
		(strings.HasPrefix(p.reply, "451 4.3.0 Local delivery unavailable") || strings.HasPrefix(p.reply, "451 4.3.0 Delivery failed for some recipients"))
}

func noAnswer(p mxPost) bool { return p.status == 0 }

// failureKind names a failed post's answer for the summary: the reply
// without its text, or the kind of error.
func failureKind(p mxPost) string {
	switch {
	case p.status != 0:
		return strconv.Itoa(p.status) + " " + p.reply
	case strings.Contains(p.reply, "connection refused"):
		return "connection refused"
	case strings.Contains(p.reply, "context canceled"):
		return "stopped"
	}
	return "no answer"
}

// startPostLoad starts the posters: poster 0 sends the large message, the
// others the small one, each to its own crashRcptsPerPoster of rcpts.
func startPostLoad(t *testing.T, s *stack.Stack, from string, rcpts []string) *postLoad {
	t.Helper()
	key := dkimKey(t, s)
	const fixtureID = "<fixture-multipar@localhost>"
	small, large := fixture(t, "enc-v4.eml", from, "bob@chat.example"), fixture(t, "enc-large-v6.eml", from, "bob@chat.example")
	for _, m := range []string{small, large} {
		if !strings.Contains(m, fixtureID) {
			t.Fatalf("a fixture has no Message-ID %s to replace", fixtureID)
		}
	}
	ld := &postLoad{s: s, client: mxdelivClient(t, s)}
	run := strings.ToLower(rand.Text()[:8])
	ctx, cancel := context.WithCancel(context.Background())
	ld.cancel = cancel
	for c := range crashPosters {
		msg := small
		if c == 0 {
			msg = large
		}
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				to := rcpts[c*crashRcptsPerPoster : (c+1)*crashRcptsPerPoster]
				id := fmt.Sprintf("crash.%s.%d.%d@elsewhere.test", run, c, n)
				raw := strings.NewReplacer("bob@chat.example", to[0], fixtureID, "<"+id+">").Replace(msg)
				signed, err := dkimSignKey(raw, "elsewhere.test", key)
				if err != nil {
					ld.record(mxPost{id: id, rcpts: to, started: time.Now(), done: time.Now(), reply: "DKIM signing: " + err.Error()})
					return
				}
				if p := ld.send(ctx, from, to, id, signed); p.acked() {
					time.Sleep(crashPause)
				} else {
					time.Sleep(crashRetryPause)
				}
			}
		}()
	}
	return ld
}

// mxdelivClient is an HTTPS client that trusts the stack's certificate
// only.
func mxdelivClient(t *testing.T, s *stack.Stack) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(s.Env["TLS_CERT"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", s.Env["TLS_CERT"])
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, MaxIdleConnsPerHost: crashPosters}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: crashPostTimeout, Transport: tr}
}

// send POSTs msg (CRLF, as is: X-Mail-Body raw) and records the outcome.
func (ld *postLoad) send(ctx context.Context, from string, to []string, id, msg string) mxPost {
	p := mxPost{id: id, rcpts: to, started: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ld.s.Env["MXDELIV_URL"], strings.NewReader(msg))
	if err == nil {
		req.Header.Set("X-Mail-From", from)
		for _, r := range to {
			req.Header.Add("X-Mail-To", r)
		}
		req.Header.Set("X-Mail-Body", "raw")
		var resp *http.Response
		if resp, err = ld.client.Do(req); err == nil {
			var body []byte
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				p.status, p.reply = resp.StatusCode, strings.TrimSpace(string(body))
			}
		}
	}
	if err != nil {
		p.reply = err.Error()
	}
	p.done = time.Now()
	ld.record(p)
	return p
}

func (ld *postLoad) record(p mxPost) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	ld.posts = append(ld.posts, p)
}

// stop ends the load and waits for the posts in flight.
func (ld *postLoad) stop() {
	ld.cancel()
	ld.wg.Wait()
}

func (ld *postLoad) snapshot() []mxPost {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	return append([]mxPost(nil), ld.posts...)
}

// wantAckAfter waits until a post that started after since is
// acknowledged: the receiver serves again.
func (ld *postLoad) wantAckAfter(t *testing.T, what string, since time.Time) {
	t.Helper()
	eventually(t, crashBackWithin, func() error {
		var last mxPost
		for _, p := range ld.snapshot() {
			if p.started.After(since) {
				if p.acked() {
					return nil
				}
				last = p
			}
		}
		return fmt.Errorf("%s: no post acknowledged (last answer: %d %q)", what, last.status, last.reply)
	})
}

// summary says how many posts started between from and to were
// acknowledged.
func (ld *postLoad) summary(from, to time.Time) string {
	posts, acked := 0, 0
	for _, p := range ld.snapshot() {
		if p.started.After(from) && p.started.Before(to) {
			posts++
			if p.acked() {
				acked++
			}
		}
	}
	return fmt.Sprintf("%d of %d posts in %v acknowledged", acked, posts, to.Sub(from).Round(time.Millisecond))
}

// cutAt counts the posts in flight at one of kills that failed as cut
// says, and of those the ones cut during DATA.
func (ld *postLoad) cutAt(kills []time.Time, cut func(mxPost) bool) (n, inData int) {
	for _, p := range ld.snapshot() {
		for _, k := range kills {
			if p.started.Before(k) && p.done.After(k) && cut(p) {
				n++
				if strings.Contains(p.reply, "Delivery failed for some recipients") {
					inData++
				}
				break
			}
		}
	}
	return n, inData
}

// wantDeliveredOnce checks every recipient's Maildir against the posts:
// each acknowledged message there exactly once, none twice, none that was
// not posted to that recipient. It fails on an answer the load should
// never get (a refusal of the message itself).
func (ld *postLoad) wantDeliveredOnce(t *testing.T, s *stack.Stack) {
	t.Helper()
	posts := ld.snapshot()
	rcpts := map[string]bool{}
	postedTo := map[string]bool{} // Message-ID + " " + recipient
	acked, failed, odd := 0, 0, 0
	failures := map[string]int{}
	for _, p := range posts {
		for _, r := range p.rcpts {
			rcpts[r] = true
			postedTo[p.id+" "+r] = true
		}
		switch {
		case p.acked():
			acked++
		case p.status == 0 || p.status == http.StatusServiceUnavailable:
			failed++ // no answer, or try again later: not acknowledged
			failures[failureKind(p)]++
		default:
			if odd++; odd <= 5 {
				t.Errorf("post of %s answered %d %q: the load's messages pass the rules", p.id, p.status, p.reply)
			}
		}
	}
	copies := map[string]int{} // Message-ID + " " + recipient
	for r := range rcpts {
		ids, without := messageIDs(t, s, r)
		for _, id := range ids {
			copies[id+" "+r]++
		}
		for _, f := range without {
			t.Errorf("%s has no Message-ID", f)
		}
	}
	lost, dup := 0, 0
	for _, p := range posts {
		if !p.acked() {
			continue
		}
		for _, r := range p.rcpts {
			switch n := copies[p.id+" "+r]; {
			case n == 0:
				if lost++; lost <= 5 {
					t.Errorf("message %s, acknowledged at %s, is not in %s's Maildir", p.id, p.done.Format("15:04:05.000"), r)
				}
			case n > 1:
				if dup++; dup <= 5 {
					t.Errorf("message %s, acknowledged at %s, is in %s's Maildir %d times", p.id, p.done.Format("15:04:05.000"), r, n)
				}
			}
		}
	}
	unacked, stray, twice := 0, 0, 0
	for key, n := range copies {
		switch {
		case !postedTo[key]:
			if stray++; stray <= 5 {
				t.Errorf("a message the load did not post to that recipient is in a Maildir: %s", key)
			}
		case n > 1:
			if twice++; twice <= 5 {
				t.Errorf("message and recipient %s: %d copies", key, n)
			}
		}
	}
	if stray+twice > 5 {
		t.Errorf("%d messages in Maildirs the load did not post there, %d in a Maildir more than once", stray, twice)
	}
	for _, p := range posts {
		for _, r := range p.rcpts {
			if !p.acked() && copies[p.id+" "+r] > 0 {
				unacked++
			}
		}
	}
	t.Logf("load: %d posts, %d acknowledged, %d failed (not acknowledged: %v); %d copies in the Maildirs, %d of them of messages not acknowledged",
		len(posts), acked, failed, failures, len(copies), unacked)
	if acked == 0 {
		t.Errorf("no post acknowledged: nothing to check")
	}
	if lost+dup > 0 {
		t.Errorf("of %d acknowledged messages, %d recipient copies are lost and %d duplicated", acked, lost, dup)
	}
}

// dovecotMasterPID returns the pid of the stack's Dovecot master (its
// run/dovecot.pid), checked to be one.
func dovecotMasterPID(t *testing.T, s *stack.Stack) int {
	t.Helper()
	return daemonPID(t, s, "dovecot", "dovecot")
}

// daemonPID returns the pid in the stack's run/NAME.pid, checked to be a
// process whose name (comm) is comm.
func daemonPID(t *testing.T, s *stack.Stack, name, comm string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Dir, "run", name+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("run/%s.pid: %v", name, err)
	}
	// comm is cut at 15 bytes.
	if got, _, err := procStat(pid); err != nil || !strings.HasPrefix(comm, got) || got == "" {
		t.Fatalf("pid %d of run/%s.pid is not %s (%q, %v)", pid, name, comm, got, err)
	}
	return pid
}

// settleLMTP ends what Dovecot's lmtp still does for the receiver after
// the load, so that a copy stored late is counted too, and none is
// stored after the count: it waits for the transactions to end, and
// kills the processes that wait for a mailbox lock left by a killed one
// (their messages were not acknowledged: they may be stored once, or
// not at all).
func settleLMTP(t *testing.T, s *stack.Stack, master int, listener string) {
	t.Helper()
	var pids []int
	for end := time.Now().Add(crashSettleFor); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if pids = lmtpServing(t, master, listener); len(pids) == 0 {
			break
		}
	}
	for _, pid := range pids {
		killLMTP(t, master, pid)
	}
	eventually(t, 10*time.Second, func() error {
		if left := lmtpServing(t, master, listener); len(left) > 0 {
			return fmt.Errorf("Dovecot's lmtp %v still serve the receiver after the load", left)
		}
		return nil
	})
	locks, err := filepath.Glob(filepath.Join(s.Env["MAILBOXES_DIR"], "*", "dovecot-uidlist.lock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after the load: %d Dovecot lmtp processes still waited after %v and were killed; %d mailboxes hold a dovecot-uidlist.lock",
		len(pids), crashSettleFor, len(locks))
}

// killLMTP kills Dovecot's lmtp process pid with SIGKILL if it still is
// one of the master's (it may have ended since it was found), and says
// whether it was.
func killLMTP(t *testing.T, master, pid int) bool {
	t.Helper()
	if comm, ppid, err := procStat(pid); err != nil || ppid != master || comm != "lmtp" {
		return false
	}
	err := syscall.Kill(pid, syscall.SIGKILL)
	if err != nil && !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("kill -9 Dovecot's lmtp %d: %v", pid, err)
	}
	return err == nil
}

// awaitLMTPServing waits until Dovecot's lmtp processes of the master
// serve a connection on listener and returns them (lmtpServing).
func awaitLMTPServing(t *testing.T, master int, listener string) []int {
	t.Helper()
	var pids []int
	eventually(t, 10*time.Second, func() error {
		if pids = lmtpServing(t, master, listener); len(pids) == 0 {
			return errors.New("no Dovecot lmtp process serves the receiver")
		}
		return nil
	})
	return pids
}

// lmtpServing returns Dovecot's lmtp processes of the master (its
// children named lmtp; other stacks' Dovecots have masters of their own)
// that hold a connection accepted on the unix socket listener: a
// connected socket bound to that path, in the master's network
// namespace. Such a process is up and in a transaction.
func lmtpServing(t *testing.T, master int, listener string) []int {
	t.Helper()
	unix, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", master))
	if err != nil {
		t.Fatal(err)
	}
	// Num RefCount Protocol Flags Type St Inode Path; St 03: connected.
	accepted := map[string]bool{}
	for line := range strings.Lines(string(unix)) {
		if f := strings.Fields(line); len(f) == 8 && f[5] == "03" && f[7] == listener {
			accepted["socket:["+f[6]+"]"] = true
		}
	}
	if len(accepted) == 0 {
		return nil
	}
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if comm, ppid, err := procStat(pid); err != nil || ppid != master || comm != "lmtp" {
			continue
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		if err != nil {
			continue // gone meanwhile
		}
		for _, fd := range fds {
			if target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && accepted[target] {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// procStat returns a process's name and its parent's pid.
func procStat(pid int) (comm string, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, err
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses.
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	f := strings.Fields(string(b[end+1:]))
	if len(f) < 2 {
		return "", 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	ppid, err = strconv.Atoi(f[1])
	return string(b[open+1 : end]), ppid, err
}

// awaitDeath waits until a killed process is gone or a zombie: dead, its
// sockets closed. (Its reaping is up to init; scripts/stack's restart
// waits for that.)
func awaitDeath(t *testing.T, pid int) {
	t.Helper()
	eventually(t, 10*time.Second, func() error {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, rest, ok := strings.Cut(string(b), ") "); ok && strings.HasPrefix(rest, "Z") {
			return nil
		}
		return fmt.Errorf("process %d still runs after SIGKILL", pid)
	})
}
