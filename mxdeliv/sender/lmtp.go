package sender

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/logging"
)

// Deliverer delivers one message to the recipients of one domain and
// answers one reply per recipient; *Sender is one.
type Deliverer interface {
	Deliver(ctx context.Context, domain string, env Envelope, body *Body) []Reply
}

// Server is the LMTP listener Postfix's lmtp client delivers outgoing
// mail to. After DATA it delivers to each recipient domain concurrently
// and answers one reply per accepted recipient, in RCPT order, so Postfix
// retries or bounces each recipient by its own result.
type Server struct {
	Deliverer Deliverer
	// Hostname is our name in the greeting and the LHLO reply.
	Hostname string
	Log      *slog.Logger
	Metrics  *Metrics
	// Panics, if set, counts the panics recovered while serving.
	Panics connserve.Counter
	// IdleTimeout closes a connection that sends no command for this
	// long; default 5m.
	IdleTimeout time.Duration
	// DataTimeout bounds reading one message body; default 10m.
	DataTimeout time.Duration
	// MaxMessageSize is the largest body taken; default 100 MiB. Postfix's
	// message_size_limit should not be larger.
	MaxMessageSize int64
	// MaxRecipients bounds the recipients of one transaction; default
	// 1000 (Postfix's lmtp_destination_recipient_limit should not be
	// larger; the rest get a 452 and Postfix sends them again).
	MaxRecipients int
	// SpoolDir holds bodies above SpoolThreshold, in unlinked files;
	// default os.TempDir().
	SpoolDir string
	// SpoolThreshold is the largest body held in memory; default 1 MiB.
	SpoolThreshold int64
	// MaxParallelDomains bounds the domains of one message delivered at
	// the same time; default 50 (the milter's recipients per message), so
	// that a message's slot at Postfix is held about one delivery time.
	MaxParallelDomains int
	// TransactionTimeout bounds the deliveries of one message: domains
	// not done by then get a temporary failure, and Postfix retries only
	// them. Default 10m; it must stay under Postfix's
	// lmtp_data_done_timeout, else Postfix gives up on the whole
	// transaction and sends the delivered recipients again too.
	TransactionTimeout time.Duration

	conns  connserve.Server
	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
}

// Line limits: a command line is at most 512 bytes by RFC 5321 with
// extensions adding some; Postfix stays far below this.
const (
	maxCommandLine = 2048
	maxBadCommands = 20
)

func (s *Server) init() {
	s.once.Do(func() {
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
		defD := func(d *time.Duration, v time.Duration) {
			if *d == 0 {
				*d = v
			}
		}
		defD(&s.IdleTimeout, 5*time.Minute)
		defD(&s.DataTimeout, 10*time.Minute)
		defD(&s.TransactionTimeout, 10*time.Minute)
		if s.MaxMessageSize == 0 {
			s.MaxMessageSize = 100 << 20
		}
		if s.MaxRecipients == 0 {
			s.MaxRecipients = 1000
		}
		if s.SpoolThreshold == 0 {
			s.SpoolThreshold = 1 << 20
		}
		if s.MaxParallelDomains == 0 {
			s.MaxParallelDomains = 50
		}
		if s.Hostname == "" {
			s.Hostname = "localhost"
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
	})
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	s.conns.Log, s.conns.Panics = s.Log, s.Panics
	return s.conns.Serve(ln, s.serveConn)
}

// Shutdown stops accepting, lets every delivery in progress finish and
// answer, closes the connections and waits for that or for ctx. When ctx
// ends first the deliveries still running are cancelled: Postfix sees the
// connection drop and retries them, so nothing is lost, though a peer may
// get a message twice.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	err := s.conns.Shutdown(ctx)
	if err != nil {
		s.cancel()
	}
	return err
}

// command is one parsed LMTP command line.
type command struct {
	verb   string // upper-case
	addr   string // MAIL and RCPT: the path without the brackets
	params map[string]string
}

// cmdError is a syntax error with the reply that says so.
type cmdError struct{ r Reply }

func (e cmdError) Error() string { return e.r.String() }

var (
	errSyntax     = cmdError{newReply(501, "5.5.4", "Syntax error in parameters or arguments", ViaNone)}
	errBadAddress = cmdError{newReply(501, "5.1.3", "Bad address syntax", ViaNone)}
	errUnknown    = cmdError{newReply(500, "5.5.2", "Command not recognized", ViaNone)}
)

// parseCommand parses one command line without its CRLF. MAIL and RCPT
// take a path in angle brackets and ESMTP parameters; RCPT's address must
// be local@domain with a domain or a domain literal.
func parseCommand(line string) (command, error) {
	verb, rest, _ := strings.Cut(line, " ")
	c := command{verb: strings.ToUpper(verb)}
	switch c.verb {
	case "LHLO":
		if strings.TrimSpace(rest) == "" {
			return c, errSyntax
		}
		return c, nil
	case "DATA", "RSET", "NOOP", "QUIT":
		return c, nil
	case "MAIL", "RCPT":
	default:
		return c, errUnknown
	}
	want := "FROM:"
	if c.verb == "RCPT" {
		want = "TO:"
	}
	if len(rest) < len(want) || !strings.EqualFold(rest[:len(want)], want) {
		return c, errSyntax
	}
	rest = strings.TrimLeft(rest[len(want):], " ")
	if !strings.HasPrefix(rest, "<") {
		return c, errSyntax
	}
	end := strings.IndexByte(rest, '>')
	if end < 0 {
		return c, errSyntax
	}
	c.addr, rest = rest[1:end], rest[end+1:]
	if rest != "" && rest[0] != ' ' {
		return c, errSyntax
	}
	for _, p := range strings.Fields(rest) {
		k, v, _ := strings.Cut(p, "=")
		if k == "" {
			return c, errSyntax
		}
		if c.params == nil {
			c.params = map[string]string{}
		}
		c.params[strings.ToUpper(k)] = v
	}
	if c.verb == "MAIL" && c.addr == "" {
		return c, nil
	}
	if !validAddress(c.addr) {
		return c, errBadAddress
	}
	return c, nil
}

// validAddress accepts local@domain: a local part of up to 64 bytes
// without space, control characters, brackets or '@' (quoted local parts
// with those are not sent by Delta Chat and would need quoting in both
// protocols we speak), and a domain of labels or a domain literal.
func validAddress(a string) bool {
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at > 64 || len(a)-at-1 > 255 {
		return false
	}
	local, domain := a[:at], a[at+1:]
	for i := 0; i < len(local); i++ {
		c := local[i]
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '@' || c == '"' || c == '\\' || c == ',' {
			return false
		}
	}
	if strings.HasPrefix(domain, "[") {
		_, ok := parseLiteral(domain)
		return ok
	}
	if domain == "" || len(domain) > 253 {
		return false
	}
	for _, label := range strings.Split(strings.TrimSuffix(domain, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c >= 0x80) {
				return false
			}
		}
	}
	return true
}

// session is the state of one LMTP connection.
type session struct {
	srv      *Server
	nc       *connserve.Conn
	r        *bufio.Reader
	w        *bufio.Writer
	lhlo     bool
	from     *string
	eightBit bool
	rcpts    []string
}

func (s *Server) serveConn(nc *connserve.Conn) {
	s.Metrics.session(1)
	defer s.Metrics.session(-1)
	ss := &session{srv: s, nc: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriterSize(nc, 4096)}
	ss.reply("220 " + s.Hostname + " LMTP ready")
	if ss.flush() != nil {
		return
	}
	bad := 0
	for {
		if ss.r.Buffered() == 0 && !nc.AwaitRequest(s.IdleTimeout) {
			ss.reply(replyShuttingDown.String())
			_ = ss.flush() // closing anyway
			return
		}
		line, err := ss.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxCommandLine {
			ss.reply("500 5.5.2 Line too long")
			_ = ss.flush() // closing anyway
			return
		}
		if err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout()) {
				s.Log.Debug("lmtp: read failed", "err", err)
			}
			return
		}
		nc.Busy(true)
		_ = nc.SetWriteDeadline(time.Now().Add(time.Minute)) // a failed deadline shows up as the write error
		quit := ss.handle(strings.TrimRight(string(line), "\r\n"), &bad)
		if ss.r.Buffered() == 0 || quit {
			if ss.flush() != nil {
				return
			}
		}
		nc.Busy(false)
		if quit {
			return
		}
		if bad >= maxBadCommands {
			ss.reply("421 4.7.0 Too many errors")
			_ = ss.flush() // closing anyway
			return
		}
	}
}

func (ss *session) reply(line string) { _, _ = ss.w.WriteString(line + "\r\n") } // errors surface at flush

func (ss *session) flush() error { return ss.w.Flush() }

func (ss *session) reset() {
	ss.from, ss.eightBit, ss.rcpts = nil, false, nil
}

// handle runs one command and reports whether the session ends.
func (ss *session) handle(line string, bad *int) bool {
	c, err := parseCommand(line)
	if err != nil {
		*bad++
		var ce cmdError
		if errors.As(err, &ce) {
			ss.reply(ce.r.String())
		}
		return false
	}
	s := ss.srv
	switch c.verb {
	case "LHLO":
		ss.reset()
		ss.lhlo = true
		ss.reply("250-" + s.Hostname)
		ss.reply("250-PIPELINING")
		ss.reply("250-ENHANCEDSTATUSCODES")
		ss.reply("250-8BITMIME")
		ss.reply("250-SMTPUTF8")
		ss.reply("250 SIZE " + strconv.FormatInt(s.MaxMessageSize, 10))
	case "NOOP":
		ss.reply("250 2.0.0 OK")
	case "RSET":
		ss.reset()
		ss.reply("250 2.0.0 OK")
	case "QUIT":
		ss.reply("221 2.0.0 Bye")
		return true
	case "MAIL":
		switch {
		case !ss.lhlo:
			ss.reply("503 5.5.1 Send LHLO first")
		case ss.from != nil:
			ss.reply("503 5.5.1 Nested MAIL command")
		default:
			if sz, ok := c.params["SIZE"]; ok {
				n, err := strconv.ParseInt(sz, 10, 64)
				if err != nil || n < 0 {
					ss.reply(errSyntax.r.String())
					return false
				}
				if n > s.MaxMessageSize {
					ss.reply(replyTooBig.String())
					return false
				}
			}
			from := c.addr
			ss.from = &from
			ss.eightBit = strings.EqualFold(c.params["BODY"], "8BITMIME")
			ss.reply("250 2.1.0 OK")
		}
	case "RCPT":
		switch {
		case ss.from == nil:
			ss.reply("503 5.5.1 Need MAIL before RCPT")
		case len(ss.rcpts) >= s.MaxRecipients:
			ss.reply("452 4.5.3 Too many recipients")
		default:
			ss.rcpts = append(ss.rcpts, c.addr)
			ss.reply("250 2.1.5 OK")
		}
	case "DATA":
		if len(ss.rcpts) == 0 {
			ss.reply("503 5.5.1 Need RCPT before DATA")
			return false
		}
		return ss.data()
	}
	return false
}

// data reads the body, delivers it and writes one reply per recipient. It
// reports whether the session ends.
func (ss *session) data() bool {
	s := ss.srv
	ss.reply("354 Start mail input; end with <CRLF>.<CRLF>")
	if ss.flush() != nil {
		return true
	}
	_ = ss.nc.SetReadDeadline(time.Now().Add(s.DataTimeout)) // a failed deadline shows up as the read error
	sp := &spool{dir: s.SpoolDir, threshold: s.SpoolThreshold, max: s.MaxMessageSize}
	if err := readData(ss.r, sp); err != nil {
		// The body is incomplete: there is nothing to answer for.
		sp.discard()
		return true
	}
	rcpts, from, eightBit := ss.rcpts, *ss.from, ss.eightBit
	ss.reset()
	body, err := sp.finish()
	var replies []Reply
	switch {
	case errors.Is(err, errTooBig):
		replies = all(len(rcpts), replyTooBig)
	case err != nil:
		s.Log.Error("lmtp: cannot spool the message", "err", err)
		replies = all(len(rcpts), replyLocalError)
	default:
		s.Metrics.size(body.Size())
		replies = s.deliverAll(Envelope{From: from, To: rcpts, EightBit: eightBit}, body)
		if err := body.Close(); err != nil {
			s.Log.Warn("lmtp: cannot release a spooled message", "err", err)
		}
	}
	for _, r := range replies {
		if r.Code < 200 || r.Code > 599 {
			// Postfix would skip an unparsable line and take the next
			// recipient's reply for this one's.
			s.Log.Error("lmtp: a delivery gave no valid reply", "code", r.Code)
			r = replyLocalError
		}
		ss.reply(r.String())
	}
	return false
}

// deliverAll groups env's recipients by domain, delivers to the domains
// concurrently and returns the replies in env.To's order.
func (s *Server) deliverAll(env Envelope, body *Body) []Reply {
	type group struct {
		domain string
		idx    []int
	}
	var groups []*group
	byDomain := map[string]*group{}
	for i, rc := range env.To {
		d := lowerASCII(strings.TrimSuffix(rc[strings.LastIndexByte(rc, '@')+1:], "."))
		g := byDomain[d]
		if g == nil {
			g = &group{domain: d}
			byDomain[d] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	out := make([]Reply, len(env.To))
	ctx, cancel := context.WithTimeout(s.ctx, s.TransactionTimeout)
	defer cancel()
	sem := make(chan struct{}, s.MaxParallelDomains)
	var wg sync.WaitGroup
start:
	for gi, g := range groups {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			for _, g := range groups[gi:] {
				for _, i := range g.idx {
					out[i] = replyOutOfTime
				}
			}
			break start
		}
		wg.Add(1)
		go func() {
			defer func() {
				if p := recover(); p != nil {
					s.conns.Recovered(p)
					for _, i := range g.idx {
						out[i] = replyLocalError
					}
				}
				<-sem
				wg.Done()
			}()
			sub := Envelope{From: env.From, EightBit: env.EightBit}
			for _, i := range g.idx {
				sub.To = append(sub.To, env.To[i])
			}
			rs := s.Deliverer.Deliver(ctx, g.domain, sub, body)
			for k, i := range g.idx {
				if k < len(rs) {
					out[i] = rs[k]
				} else {
					// A Deliverer that answers too few is a bug; the
					// recipient is retried, never acknowledged.
					out[i] = replyLocalError
				}
			}
		}()
	}
	wg.Wait()
	if s.ctx.Err() != nil {
		for i, r := range out {
			if !r.OK() {
				out[i] = replyShuttingDown
			}
		}
	}
	s.Log.Debug("lmtp: message delivered", "recipients", len(out), "domains", len(groups), logging.Addr(env.From))
	return out
}
