package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// fedLoad is the fed-load subcommand: federated mail from one server's
// users to accounts of another, end to end. -c senders, each in one SMTP
// submission session (STARTTLS, AUTH PLAIN) with A's Postfix, send the
// fixture -msg (alice@chat.example and bob@chat.example replaced by the
// sender and the recipient), message n to the n-th of -to (round robin),
// each with a Message-ID of its own: the marker by which it is found in
// its recipient's Maildir at B (-mailboxes/ADDRESS). A sender sends its
// next message as soon as it has fewer than -inflight messages accepted by
// A and not yet in B's Maildir (0: as soon as A accepted the last one).
//
// The latency of a message is from the reply to its end of DATA (A's
// Postfix accepted it) to the moment its file appears in the Maildir's
// new/: watched with inotify (IN_CREATE, IN_MOVED_TO; maildirWatch), each
// file read once for its marker, stamped when the event is read:
// microseconds after Dovecot's rename on an idle machine (the watcher
// shares the CPU with everything else under load).
//
// Senders start messages for -duration; the first -warmup of it is left
// out. It prints the messages accepted, the errors, the CPU per process
// group (with -netns; procSampler) and then one machine-readable line:
// messages/s arrived in the Maildirs within the window (from -warmup to
// -duration), p50 and p99 latency (ms) of the messages accepted within
// it, the CPU time the whole machine spent per arrived message in the
// window (ms), the messages accepted in all, the messages whose sending
// failed (a session that would not open, a reply other than 2xx), and the
// CPU time of the processes in the -netns namespaces per arrived
// message (ms; "-" without -netns): the stacks' own, which other work on
// the machine changes little. It waits for every accepted message (up to
// -timeout after the end) and fails if one did not arrive, or any arrived
// more than once or in the wrong Maildir. -markers writes what fed-check
// needs.
func fedLoad(args []string) error {
	fs := flag.NewFlagSet("fed-load", flag.ExitOnError)
	addr := fs.String("addr", "", "A's submission host:port (STARTTLS)")
	caFile := fs.String("ca", "", "PEM roots A's certificate chains to")
	serverName := fs.String("server-name", "", "the name A's certificate is verified for")
	from := fs.String("from", "", "the senders, accounts of A, comma separated (used in turn by the senders)")
	pass := fs.String("pass", "", "the senders' password")
	to := fs.String("to", "", "the recipients, accounts of B, comma separated (message n goes to the n-th, round robin)")
	mailboxes := fs.String("mailboxes", "", "B's mailboxes directory (each recipient's Maildir is DIR/ADDRESS)")
	msgFile := fs.String("msg", "", "message file (alice@chat.example sends, bob@chat.example receives)")
	conc := fs.Int("c", 8, "concurrent senders")
	inflight := fs.Int("inflight", 1, "messages a sender may have accepted but not delivered (0: no limit)")
	duration := fs.Duration("duration", 20*time.Second, "how long to start messages")
	warmup := fs.Duration("warmup", 4*time.Second, "left out of the figures")
	timeout := fs.Duration("timeout", 2*time.Minute, "how long to wait for the last messages after the end")
	netns := fs.String("netns", "", "CPU per process group: LABEL=NETNS,... (the stacks' network namespaces)")
	markers := fs.String("markers", "", "write the run's marker and the accepted messages to this file (fed-check)")
	top := fs.Int("top", 14, "process groups printed (the rest in one line)")
	fs.Parse(args)
	if *addr == "" || *from == "" || *to == "" || *mailboxes == "" || *msgFile == "" || *conc < 1 || *warmup >= *duration {
		return errors.New("fed-load: -addr, -from, -to, -mailboxes, -msg are needed, -c >= 1, -warmup < -duration")
	}
	tlsCfg := &tls.Config{ServerName: *serverName}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		tlsCfg.RootCAs = x509.NewCertPool()
		if !tlsCfg.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s: no certificate", *caFile)
		}
	}
	raw, err := os.ReadFile(*msgFile)
	if err != nil {
		return err
	}
	senders, rcpts := strings.Split(*from, ","), strings.Split(*to, ",")
	run := newFedRun(*mailboxes, rcpts)
	// One message per sender and recipient, each with its Message-ID to fill in.
	tmpls := make([][]fedTemplate, len(senders))
	for i, s := range senders {
		tmpls[i] = make([]fedTemplate, len(rcpts))
		for j, r := range rcpts {
			if tmpls[i][j], err = newFedTemplate(raw, s, r, run.id); err != nil {
				return err
			}
		}
	}
	groups, err := parseNetns(*netns)
	if err != nil {
		return err
	}

	w, err := watchMaildirs(run)
	if err != nil {
		return err
	}
	defer w.close()

	start := time.Now()
	end := start.Add(*duration)
	winStart := start.Add(*warmup)
	var (
		cpuWin0, cpuWin1 time.Duration
		sampler          *procSampler
		samplerDone      = make(chan struct{})
	)
	go func() {
		defer close(samplerDone)
		time.Sleep(time.Until(winStart))
		cpuWin0 = busyCPU()
		if groups != nil {
			sampler = newProcSampler(groups)
			for time.Now().Before(end) {
				time.Sleep(min(250*time.Millisecond, time.Until(end)))
				sampler.sample()
			}
		}
		time.Sleep(time.Until(end))
		cpuWin1 = busyCPU()
	}()

	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for i := range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			mine := tmpls[i%len(tmpls)]
			var slots chan struct{}
			if *inflight > 0 {
				slots = make(chan struct{}, *inflight)
			}
			var c *smtp.Client
			defer func() {
				if c != nil {
					c.Quit()
					c.Close()
				}
			}()
			for {
				if slots != nil {
					select {
					case slots <- struct{}{}:
					case <-time.After(time.Until(end)):
						return
					}
				}
				if !time.Now().Before(end) {
					return
				}
				n := run.add(slots)
				tmpl := &mine[n%len(mine)]
				if c == nil {
					if c, err = fedSession(*addr, tlsCfg, tmpl.from, *pass); err != nil {
						c = nil
					}
				}
				if c != nil {
					err = c.SendMail(tmpl.from, []string{tmpl.to}, bytes.NewReader(tmpl.message(n)))
				}
				if err != nil {
					run.failed(n)
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					if c != nil {
						c.Close()
						c = nil
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
				run.accepted(n, time.Now())
			}
		}()
	}
	wg.Wait()
	<-samplerDone
	if err := run.await(*timeout); err != nil {
		return err
	}
	// A second copy would come soon after the first (Postfix retrying a
	// delivery it thought failed): a moment more, then the whole Maildir.
	time.Sleep(time.Second)
	w.close()
	if err := run.verify(); err != nil {
		return err
	}
	if *markers != "" {
		if err := os.WriteFile(*markers, run.markers(), 0o644); err != nil {
			return err
		}
	}

	win := end.Sub(winStart)
	delivered, lat := run.window(winStart, end)
	if len(lat) == 0 || delivered == 0 {
		return errors.New("fed-load: nothing accepted and delivered within the window")
	}
	slices.Sort(lat)
	accepted := run.acceptedCount()
	fmt.Printf("messages accepted by A %d, not sent (failed) %d; in the window (%.0f s): %d arrived, %d accepted\n",
		accepted, failed.Load(), win.Seconds(), delivered, len(lat))
	if e, ok := firstErr.Load().(string); ok {
		fmt.Printf("first error: %s\n", e)
	}
	stacks := "-"
	if sampler != nil {
		sampler.report(cpuWin1-cpuWin0, win, delivered, *top)
		stacks = fmt.Sprintf("%.3f", sampler.stacks().Seconds()*1000/float64(delivered))
	}
	fmt.Printf("%.1f %.2f %.2f %.3f %d %d %s\n", float64(delivered)/win.Seconds(), ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]),
		(cpuWin1-cpuWin0).Seconds()*1000/float64(delivered), accepted, failed.Load(), stacks)
	return nil
}

// fedCheck is the fed-check subcommand: every message fed-load -markers
// recorded as accepted is in its recipient's Maildir exactly once, and no
// other of the run's messages is there twice. make bench runs it at the
// end, once the queues are empty, over every run.
func fedCheck(args []string) error {
	fs := flag.NewFlagSet("fed-check", flag.ExitOnError)
	markers := fs.String("markers", "", "fed-load's -markers file")
	fs.Parse(args)
	b, err := os.ReadFile(*markers)
	if err != nil {
		return err
	}
	// The run's marker, B's mailboxes directory, the recipients, then the
	// accepted messages' numbers.
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) < 3 {
		return fmt.Errorf("%s: too short", *markers)
	}
	run := newFedRun(lines[1], strings.Split(lines[2], ","))
	run.id = lines[0]
	for _, l := range lines[3:] {
		n, err := strconv.Atoi(l)
		if err != nil {
			return fmt.Errorf("%s: %q", *markers, l)
		}
		for len(run.msgs) <= n {
			run.msgs = append(run.msgs, &fedMsg{})
		}
		run.msgs[n].acc = time.Unix(1, 0)
	}
	return run.verify()
}

// fedSession opens a submission session: STARTTLS, AUTH PLAIN.
func fedSession(addr string, tlsCfg *tls.Config, user, pass string) (*smtp.Client, error) {
	c, err := smtp.DialStartTLS(addr, tlsCfg)
	if err != nil {
		return nil, err
	}
	c.CommandTimeout, c.SubmissionTimeout = time.Minute, time.Minute
	if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// fedTemplate is the message of one sender, split where its Message-ID goes.
type fedTemplate struct {
	from, to     string
	head, tail   []byte
	domain, mark string
}

func newFedTemplate(raw []byte, from, to, run string) (fedTemplate, error) {
	s := strings.NewReplacer("alice@chat.example", from, "bob@chat.example", to).Replace(string(raw))
	s = strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
	hdrEnd := strings.Index(s, "\r\n\r\n")
	i := strings.Index(strings.ToLower(s), "\r\nmessage-id:")
	if hdrEnd < 0 || i < 0 || i > hdrEnd {
		return fedTemplate{}, errors.New("fed-load: the message has no Message-ID field to replace")
	}
	j := i + 2 + strings.Index(s[i+2:], "\r\n")
	_, domain, _ := strings.Cut(from, "@")
	return fedTemplate{from: from, to: to, head: []byte(s[:i+2] + "Message-ID: <"), tail: []byte(s[j:]),
		domain: domain, mark: "fb-" + run + "-"}, nil
}

// message returns message n: its Message-ID <fb-RUN-N@DOMAIN>.
func (t *fedTemplate) message(n int) []byte {
	b := make([]byte, 0, len(t.head)+len(t.tail)+64)
	b = append(b, t.head...)
	b = append(b, t.mark...)
	b = strconv.AppendInt(b, int64(n), 10)
	b = append(b, '@')
	b = append(b, t.domain...)
	b = append(b, '>')
	return append(b, t.tail...)
}

// fedRun is the state of the messages of one run, by number.
type fedRun struct {
	id        string
	mailboxes string
	rcpts     []string
	mu        sync.Mutex
	msgs      []*fedMsg
	// arrivals of files whose marker names no message of the run, or none
	unknown []string
	changed chan struct{} // a message arrived
}

type fedMsg struct {
	acc, arr time.Time
	copies   int
	failed   bool
	slots    chan struct{} // the sender's, released at the arrival
}

func newFedRun(mailboxes string, rcpts []string) *fedRun {
	var b [4]byte
	rand.Read(b[:])
	return &fedRun{id: hex.EncodeToString(b[:]), mailboxes: mailboxes, rcpts: rcpts, changed: make(chan struct{}, 1)}
}

func (r *fedRun) add(slots chan struct{}) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, &fedMsg{slots: slots})
	return len(r.msgs) - 1
}

func (r *fedRun) accepted(n int, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs[n].acc = t
}

// failed: the client saw an error; if A accepted the message all the
// same, it arrives, and is counted as any other arrival.
func (r *fedRun) failed(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.msgs[n]
	m.failed = true
	if m.slots != nil && m.copies == 0 {
		<-m.slots
		m.slots = nil
	}
}

// arrived records a file of the Maildir: its marker's message number, or
// -1 for a file without one of this run.
func (r *fedRun) arrived(n int, name string, t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if n < 0 || n >= len(r.msgs) {
		r.unknown = append(r.unknown, name)
		return
	}
	m := r.msgs[n]
	m.copies++
	if m.copies == 1 {
		m.arr = t
		if m.slots != nil {
			<-m.slots
			m.slots = nil
		}
	}
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// await waits until every accepted message has arrived.
func (r *fedRun) await(timeout time.Duration) error {
	deadline := time.After(timeout)
	for {
		r.mu.Lock()
		missing := 0
		for _, m := range r.msgs {
			if !m.acc.IsZero() && m.copies == 0 {
				missing++
			}
		}
		r.mu.Unlock()
		if missing == 0 {
			return nil
		}
		select {
		case <-r.changed:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			return fmt.Errorf("fed-load: %d accepted messages not in the Maildir %v after the end", missing, timeout)
		}
	}
}

// window returns the messages that arrived within [from, to) and the
// latencies of those accepted within it.
func (r *fedRun) window(from, to time.Time) (arrived int, lat []time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := func(t time.Time) bool { return !t.Before(from) && t.Before(to) }
	for _, m := range r.msgs {
		if m.copies > 0 && in(m.arr) {
			arrived++
		}
		if !m.acc.IsZero() && in(m.acc) {
			// A file can show before the client has read the 250 (both
			// are stamped after the fact): no negative latencies.
			lat = append(lat, max(m.arr.Sub(m.acc), 0))
		}
	}
	return arrived, lat
}

func (r *fedRun) acceptedCount() (n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if !m.acc.IsZero() {
			n++
		}
	}
	return n
}

func (r *fedRun) markers() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\n%s\n%s\n", r.id, r.mailboxes, strings.Join(r.rcpts, ","))
	for n, m := range r.msgs {
		if !m.acc.IsZero() {
			fmt.Fprintf(&b, "%d\n", n)
		}
	}
	return b.Bytes()
}

// verify reads the recipients' whole Maildirs (new/ and cur/): every
// accepted message exactly once, in its recipient's, no message twice,
// nothing else.
func (r *fedRun) verify() error {
	count := map[int]int{}
	var unknown []string
	for j, rcpt := range r.rcpts {
		for _, sub := range []string{"new", "cur"} {
			dir := filepath.Join(r.mailboxes, rcpt, sub)
			es, err := os.ReadDir(dir)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			for _, e := range es {
				b, err := os.ReadFile(filepath.Join(dir, e.Name()))
				if err != nil {
					return err
				}
				if n := fedMarker(b, r.id); n >= 0 && n%len(r.rcpts) == j {
					count[n]++
				} else {
					unknown = append(unknown, rcpt+"/"+sub+"/"+e.Name())
				}
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var lost, twice, strange []string
	for n, m := range r.msgs {
		switch c := count[n]; {
		case c == 0 && !m.acc.IsZero():
			lost = append(lost, strconv.Itoa(n))
		case c > 1:
			twice = append(twice, fmt.Sprintf("%d (%d copies)", n, c))
		}
	}
	for n := range count {
		if n >= len(r.msgs) {
			strange = append(strange, strconv.Itoa(n))
		}
	}
	strange = append(strange, unknown...)
	strange = append(strange, r.unknown...)
	var errs []error
	if len(lost) > 0 {
		errs = append(errs, fmt.Errorf("accepted by A, not in B's Maildir: %d (%s)", len(lost), cut(lost)))
	}
	if len(twice) > 0 {
		errs = append(errs, fmt.Errorf("in B's Maildir more than once: %d (%s)", len(twice), cut(twice)))
	}
	if len(strange) > 0 {
		errs = append(errs, fmt.Errorf("in B's Maildirs, not sent there by this run: %d (%s)", len(strange), cut(strange)))
	}
	if len(errs) > 0 {
		return fmt.Errorf("fed-load: run %s, Maildirs in %s: %w", r.id, r.mailboxes, errors.Join(errs...))
	}
	return nil
}

func cut(s []string) string {
	if len(s) > 5 {
		return strings.Join(s[:5], ", ") + ", ..."
	}
	return strings.Join(s, ", ")
}

// fedMarker returns the number of the run's marker in a message, or -1.
func fedMarker(b []byte, run string) int {
	mark := []byte("<fb-" + run + "-")
	i := bytes.Index(b, mark)
	if i < 0 {
		return -1
	}
	rest := b[i+len(mark):]
	j := bytes.IndexByte(rest, '@')
	if j < 1 {
		return -1
	}
	n, err := strconv.Atoi(string(rest[:j]))
	if err != nil {
		return -1
	}
	return n
}

// maildirWatch stamps the files that appear in the recipients' Maildirs'
// new/. Dovecot makes a Maildir at its first delivery: the mailboxes
// directory is watched for the recipients' directories, those for their
// new/, and new/ for its files; each directory is read once it is
// watched, for what came before.
type maildirWatch struct {
	run  *fedRun
	want map[string]bool // the recipients' directory names
	fd   int
	f    *os.File
	dirs map[int32]watchedDir
	seen map[string]bool // RECIPIENT/NAME
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

type watchedDir struct {
	rcpt string // "" for the mailboxes directory
	new  bool   // the recipient's new/, else its Maildir
}

func watchMaildirs(run *fedRun) (*maildirWatch, error) {
	w := &maildirWatch{run: run, want: map[string]bool{}, dirs: map[int32]watchedDir{}, seen: map[string]bool{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, r := range run.rcpts {
		w.want[r] = true
	}
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w.fd = fd
	// Non-blocking: the runtime's poller reads it, and Close ends a read.
	w.f = os.NewFile(uintptr(fd), "inotify")
	if err := w.watch(run.mailboxes, watchedDir{}); err != nil {
		w.f.Close()
		return nil, fmt.Errorf("inotify: %s: %w", run.mailboxes, err)
	}
	t := time.Now()
	for r := range w.want {
		w.maildir(r, t)
	}
	go w.loop()
	return w, nil
}

func (w *maildirWatch) watch(path string, d watchedDir) error {
	wd, err := syscall.InotifyAddWatch(w.fd, path, syscall.IN_CREATE|syscall.IN_MOVED_TO|syscall.IN_ONLYDIR)
	if err != nil {
		return err
	}
	w.dirs[int32(wd)] = d
	return nil
}

// maildir watches a recipient's Maildir, if it exists, and its new/.
func (w *maildirWatch) maildir(rcpt string, t time.Time) {
	if w.watch(filepath.Join(w.run.mailboxes, rcpt), watchedDir{rcpt: rcpt}) == nil {
		w.newDir(rcpt, t)
	}
}

// newDir watches a recipient's new/, if it exists, and stamps what it
// holds with t.
func (w *maildirWatch) newDir(rcpt string, t time.Time) {
	dir := filepath.Join(w.run.mailboxes, rcpt, "new")
	if w.watch(dir, watchedDir{rcpt: rcpt, new: true}) != nil {
		return
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		w.file(rcpt, e.Name(), t)
	}
}

func (w *maildirWatch) close() {
	w.once.Do(func() {
		close(w.stop)
		w.f.Close()
		<-w.done
	})
}

func (w *maildirWatch) loop() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := w.f.Read(buf)
		t := time.Now()
		if err != nil {
			select {
			case <-w.stop:
			default:
				fmt.Fprintln(os.Stderr, "fed-load: inotify:", err)
			}
			return
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= n; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := string(bytes.TrimRight(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)], "\x00"))
			off += syscall.SizeofInotifyEvent + int(ev.Len)
			if ev.Mask&syscall.IN_Q_OVERFLOW != 0 {
				// Events lost: read every directory again.
				for r := range w.want {
					w.maildir(r, t)
				}
				continue
			}
			d, ok := w.dirs[ev.Wd]
			switch {
			case !ok || name == "":
			case d.rcpt == "" && w.want[name]:
				w.maildir(name, t)
			case d.rcpt != "" && !d.new && name == "new":
				w.newDir(d.rcpt, t)
			case d.new:
				w.file(d.rcpt, name, t)
			}
		}
	}
}

func (w *maildirWatch) file(rcpt, name string, t time.Time) {
	key := rcpt + "/" + name
	if w.seen[key] {
		return
	}
	w.seen[key] = true
	b, err := os.ReadFile(filepath.Join(w.run.mailboxes, rcpt, "new", name))
	if err != nil {
		// Gone (to cur/): verify reads it there.
		return
	}
	w.run.arrived(fedMarker(b, w.run.id), key, t)
}

// procSampler adds up the CPU time of processes by group: the network
// namespace a process is in (a label of -netns, or "host") and its name
// (Dovecot's title, or Postfix's program and service: "smtpd[587]").
// Processes are sampled every 250 ms: one that ends loses at most its last
// 250 ms, one that starts counts from 0.
type procSampler struct {
	ns    map[string]string // "net:[inode]" -> label
	procs map[procKey]*procSeen
}

type procKey struct {
	pid   int
	start string
}

type procSeen struct {
	group       string
	first, last int64
}

func parseNetns(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	m := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		label, name, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("-netns: want LABEL=NETNS, got %q", kv)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/run/netns", name), &st); err != nil {
			return nil, fmt.Errorf("-netns: %w", err)
		}
		m[fmt.Sprintf("net:[%d]", st.Ino)] = label
	}
	return m, nil
}

func newProcSampler(ns map[string]string) *procSampler {
	p := &procSampler{ns: ns, procs: map[procKey]*procSeen{}}
	p.walk(false)
	return p
}

func (p *procSampler) sample() { p.walk(true) }

// walk reads every process's CPU time; those seen first in a later walk
// were born since (their whole time counts).
func (p *procSampler) walk(later bool) {
	ds, _ := os.ReadDir("/proc")
	for _, d := range ds {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// After "(comm) ": state is field 3; utime 14, stime 15, starttime 22.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+2:]))
		if len(f) < 20 {
			continue
		}
		k := procKey{pid, f[19]}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		if s := p.procs[k]; s != nil {
			s.last = ut + st
			continue
		}
		s := &procSeen{group: p.group(pid, string(stat[bytes.IndexByte(stat, '(')+1:i])), last: ut + st}
		if !later {
			s.first = ut + st
		}
		p.procs[k] = s
	}
}

func (p *procSampler) group(pid int, comm string) string {
	link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	label, ok := p.ns[link]
	if !ok {
		label = "host"
	}
	name := comm
	if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
		args := strings.Split(strings.TrimRight(string(cl), "\x00"), "\x00")
		switch {
		case strings.HasPrefix(args[0], "dovecot") && strings.Contains(args[0], "/"):
			// "dovecot-INSTANCE/lmtp [...]"
			_, title, _ := strings.Cut(strings.Fields(args[0])[0], "/")
			name = "dovecot/" + title
		case len(args) > 2 && args[1] == "-n":
			// Postfix's services: "smtpd -n 10.77.0.2:587 -t inet".
			svc := args[2]
			if _, port, ok := strings.Cut(svc, ":"); ok {
				svc = port
			}
			name = "postfix/" + comm
			if svc != comm {
				name += "[" + svc + "]"
			}
		case comm == "master" || comm == "postfix-script":
			name = "postfix/" + comm
		}
	}
	if label == "host" && name != "chatmail-bench" {
		// The kernel's threads (softirq work of the veths) and the rest.
		name = strings.TrimRight(strings.SplitN(name, "/", 2)[0], "0123456789:")
	}
	return label + " " + name
}

// stacks is the CPU time of the processes in the -netns namespaces.
func (p *procSampler) stacks() time.Duration {
	var ticks int64
	for _, s := range p.procs {
		if !strings.HasPrefix(s.group, "host ") {
			ticks += s.last - s.first
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ 100
}

// report prints the groups' CPU time per arrived message and their share
// of the machine's busy time, most first.
func (p *procSampler) report(busy, win time.Duration, delivered, top int) {
	byGroup := map[string]int64{}
	var total int64
	for _, s := range p.procs {
		d := s.last - s.first
		byGroup[s.group] += d
		total += d
	}
	type g struct {
		name  string
		ticks int64
	}
	var gs []g
	for k, v := range byGroup {
		if v > 0 {
			gs = append(gs, g{k, v})
		}
	}
	slices.SortFunc(gs, func(a, b g) int { return int(b.ticks - a.ticks) })
	tick := 10 * time.Millisecond // USER_HZ 100
	bw := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(bw, "CPU by process (/proc/PID/stat, sampled every 250 ms; %.0f %% of the machine's busy time): ms per message, %% of one core\n",
		100*float64(time.Duration(total)*tick)/float64(max(busy, 1)))
	var rest int64
	for i, x := range gs {
		if i >= top {
			rest += x.ticks
			continue
		}
		d := time.Duration(x.ticks) * tick
		fmt.Fprintf(bw, "  %-32s %6.3f ms %5.1f %%\n", x.name, d.Seconds()*1000/float64(delivered), 100*d.Seconds()/win.Seconds())
	}
	if rest > 0 {
		d := time.Duration(rest) * tick
		fmt.Fprintf(bw, "  %-32s %6.3f ms %5.1f %%\n", "(the rest)", d.Seconds()*1000/float64(delivered), 100*d.Seconds()/win.Seconds())
	}
	bw.Flush()
}
