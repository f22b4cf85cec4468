// Package receiver serves POST /mxdeliv: mail from other chatmail
// servers over HTTPS, the fast path of federation, delivered straight to
// Dovecot's LMTP under the same rules as mail that comes over SMTP.
//
// The request, as chatmail relays (filtermail) and madmail send it:
// X-Mail-From once (absent or empty: the null sender), X-Mail-To once per
// recipient, the message as the body (a Content-Length or chunked). The
// body's form is FormSMTP unless X-Mail-Body says FormRaw (see Decoder).
// Every path is served: the web server in front decides which reach it.
//
// The steps, and the answers (the body is always one SMTP reply line;
// every sender treats anything but 200 as "fall back to SMTP"):
//
//  1. Not POST: 405 "Method Not Allowed". More requests in progress than
//     allowed: 503.
//  2. The envelope: syntax, at most max_recipients, every recipient in a
//     [mail] domain (else 400 "554 5.7.1 Relay access denied", Postfix's
//     text).
//  3. The body, decoded while it streams: over max_message_size 413 "552
//     5.3.4 Message exceeds maximum size"; the header over its limits
//     413, malformed 400.
//  4. The mail rules of package mailpolicy, exactly as the milter applies
//     them to unauthenticated (incoming) SMTP mail: Begin without a login,
//     Rcpt for each recipient, Replay of the message. A refusal is 400
//     with the milter's reply (523 for cleartext), a temporary one (a DKIM
//     key lookup that failed) 503 with its 4xx reply.
//  5. The recipients' accounts: unknown and blocked ones are answered
//     alike, 400 "550 5.1.1 Recipient address rejected: User unknown",
//     at most at the pace UnknownLimiter allows per DKIM signer. This
//     comes after the rules on purpose: a probe costs a DKIM-signed,
//     encrypted message from a domain the prober controls, and a hit
//     delivers it. The store down: 503.
//  6. One LMTP transaction with every recipient. The message is the one
//     the rules judged, with the header changes of their verdict
//     (mailpolicy.Apply: what the milter asks Postfix to make). No
//     Received line is added (Postfix's own is removed before delivery
//     too, deploy/postfix/mx_header_cleanup). 200 "250 OK" only once
//     LMTP accepted the message for every recipient.
//
// LMTP outcomes: a recipient refused at RCPT aborts the transaction
// before DATA (RSET), so nothing is delivered: 400 with Dovecot's reply
// if it is permanent, else 503. After DATA, all accepted is 200; all
// refused permanently is 400; anything else (some delivered, some not,
// or the connection lost during DATA) is 503: the sender sends again, to
// everyone, or falls back to SMTP. Some recipients may then get the
// message twice, which Delta Chat removes by Message-ID: duplicates over
// loss. Nothing is acknowledged before Dovecot has stored it, so a crash
// at any point loses nothing acknowledged.
package receiver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/mail"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"chatmail.dev/mxdeliv/lmtp"
	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/mailpolicy"
	"golang.org/x/net/publicsuffix"
)

// Replies of the receiver's own.
var (
	ReplyOK            = "250 OK" // filtermail's success body, which madmail expects
	ReplyRelayDenied   = mailpolicy.Reply{Code: 554, Enhanced: "5.7.1", Text: "Relay access denied"}
	ReplyUnknownUser   = mailpolicy.Reply{Code: 550, Enhanced: "5.1.1", Text: "Recipient address rejected: User unknown"}
	ReplyUnknownPaced  = mailpolicy.Reply{Code: 450, Enhanced: "4.7.1", Text: "Too many unknown recipients, try again later"}
	ReplyBusy          = mailpolicy.Reply{Code: 451, Enhanced: "4.3.2", Text: "Too many deliveries in progress, try again later"}
	ReplyStoreDown     = mailpolicy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Account store unavailable, try again later"}
	ReplyDeliveryDown  = mailpolicy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Local delivery unavailable, try again later"}
	ReplyPartial       = mailpolicy.Reply{Code: 451, Enhanced: "4.3.0", Text: "Delivery failed for some recipients, try again later"}
	ReplyReadFailed    = mailpolicy.Reply{Code: 451, Enhanced: "4.4.2", Text: "Error reading the message, try again later"}
	replyMethodAllowed = "Method Not Allowed"
)

// Accounts looks up recipients; *accounts.Store does.
type Accounts interface {
	Credentials(ctx context.Context, address string) (accounts.Credentials, error)
}

// Handler serves /mxdeliv. Set the fields, then use it; it must not be
// copied after first use.
type Handler struct {
	Engine   *mailpolicy.Engine
	Mail     *config.Mail
	Accounts Accounts
	// Ready, if set, says whether the account store can be used (its
	// schema is migrated); until then every delivery is answered 503.
	Ready func() bool
	// LMTPNetwork and LMTPAddr name Dovecot's LMTP socket ("unix", a path).
	LMTPNetwork, LMTPAddr string
	// LMTPTimeout bounds each LMTP command and each write of the message.
	LMTPTimeout time.Duration
	// MaxMessageSize bounds the message as decoded (Postfix's
	// message_size_limit).
	MaxMessageSize int64
	// MaxRecipients bounds the X-Mail-To fields of a request.
	MaxRecipients int
	// MaxConcurrent bounds the requests in progress; more wait up to
	// SlotWait, then are answered 503. One client address (not loopback)
	// may hold half of them.
	MaxConcurrent int
	// SlotWait is how long a request waits for a slot; default 5s. A busy
	// peer's burst queues briefly instead of falling back to SMTP (and
	// remembering this server as SMTP-only for half an hour).
	SlotWait time.Duration
	// RequestTimeout bounds a request from its header to the answer:
	// reading the body (a slow sender is cut off), the rules and LMTP.
	RequestTimeout time.Duration
	// SpoolDir holds the bodies over 256 KiB until delivered, unlinked;
	// "" is os.TempDir().
	SpoolDir string
	// Unknown paces unknown-recipient answers per DKIM signing domain.
	Unknown *UnknownLimiter
	Log     *slog.Logger
	Metrics *Metrics
	// Panics, if set, counts the panics recovered; the request gets a 503.
	Panics connserve.Counter

	once sync.Once
	sem  chan struct{}

	peersMu sync.Mutex
	peers   map[netip.Addr]*peerSlots // per direct client
}

// peerSlots are one client address's share of the request slots.
type peerSlots struct {
	ch   chan struct{}
	refs int
}

// perPeerShare: one client address may hold 1/perPeerShare of the slots.
// With tls_listen, a client that opens requests and then trickles their
// bodies would otherwise hold every slot until the request timeout; half
// leaves a busy peer most of an idle server.
const perPeerShare = 2

// enterPeer waits up to SlotWait for a slot of the client at remoteAddr.
// Requests through a web server on this host (loopback, a unix socket)
// are not counted: that server buffers bodies.
func (h *Handler) enterPeer(ctx context.Context, remoteAddr string) (leave func(), ok bool) {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil || ap.Addr().Unmap().IsLoopback() {
		return func() {}, true
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		a = netip.PrefixFrom(a, 64).Masked().Addr() // one host may own a /64
	}
	h.peersMu.Lock()
	p := h.peers[a]
	if p == nil {
		p = &peerSlots{ch: make(chan struct{}, max(h.MaxConcurrent/perPeerShare, 1))}
		h.peers[a] = p
	}
	p.refs++
	h.peersMu.Unlock()
	unref := func() {
		h.peersMu.Lock()
		defer h.peersMu.Unlock()
		if p.refs--; p.refs == 0 {
			delete(h.peers, a)
		}
	}
	if !waitSlot(ctx, p.ch, h.SlotWait) {
		unref()
		return nil, false
	}
	return func() { <-p.ch; unref() }, true
}

// waitSlot takes a slot of sem, waiting up to wait.
func waitSlot(ctx context.Context, sem chan struct{}, wait time.Duration) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case sem <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	return false
}

func (h *Handler) init() {
	h.once.Do(func() {
		h.sem = make(chan struct{}, max(h.MaxConcurrent, 1))
		h.peers = map[netip.Addr]*peerSlots{}
		if h.SlotWait == 0 {
			h.SlotWait = 5 * time.Second
		}
		if h.Log == nil {
			h.Log = slog.New(slog.DiscardHandler)
		}
	})
}

// outcome is the answer to a request.
type outcome struct {
	status int
	result string
	reply  string
}

func answer(status int, result string, r mailpolicy.Reply) outcome {
	return outcome{status: status, result: result, reply: r.String()}
}

// refusal is the answer carrying an SMTP reply: 503 for a temporary one,
// 413 for a size limit, else 400.
func refusal(result string, r mailpolicy.Reply) outcome {
	switch {
	case r.Temporary():
		return answer(http.StatusServiceUnavailable, result, r)
	case r.Code == 552 && (r == ReplyTooLarge || r == mailpolicy.ReplyHeaderTooLarge):
		return answer(http.StatusRequestEntityTooLarge, ResultTooLarge, r)
	}
	return answer(http.StatusBadRequest, result, r)
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.init()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		h.write(w, outcome{http.StatusMethodNotAllowed, ResultMethod, replyMethodAllowed})
		return
	}
	// The request's time runs from here, its waits for a slot included:
	// the answer must come before the sender's own timeout, or it sends
	// the message again over SMTP.
	start := time.Now()
	leave, ok := h.enterPeer(r.Context(), r.RemoteAddr)
	if !ok {
		h.write(w, refusal(ResultBusy, ReplyBusy))
		return
	}
	defer leave()
	if !waitSlot(r.Context(), h.sem, h.SlotWait) {
		h.write(w, refusal(ResultBusy, ReplyBusy))
		return
	}
	defer func() { <-h.sem }()
	h.Metrics.Active.Inc()
	defer h.Metrics.Active.Dec()
	written := false
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			if h.Panics != nil {
				h.Panics.Inc()
			}
			// The stack, not the value: a value may quote the message.
			h.Log.Error("panic serving a request", "stack", string(debug.Stack()))
			if !written {
				h.write(w, refusal(ResultInternal, mailpolicy.ReplyInternal))
			}
		}
	}()
	// Per request, whatever the server's defaults: a sender that trickles
	// its body is cut off at the deadline.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(start.Add(h.RequestTimeout))                  // unsupported only by test recorders
	_ = rc.SetWriteDeadline(start.Add(h.RequestTimeout + 5*time.Second)) // likewise
	ctx, cancel := context.WithDeadline(r.Context(), start.Add(h.RequestTimeout))
	defer cancel()
	o := h.deliver(ctx, w, r)
	written = true
	h.write(w, o)
	h.Metrics.Duration.Observe(time.Since(start).Seconds())
}

func (h *Handler) write(w http.ResponseWriter, o outcome) {
	h.Metrics.Requests.WithLabelValues(o.result).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(o.status)
	_, _ = io.WriteString(w, o.reply) // a sender gone has its answer: none
}

// deliver runs the steps of the package doc and returns the answer.
func (h *Handler) deliver(ctx context.Context, w http.ResponseWriter, r *http.Request) outcome {
	env, bad := ParseEnvelope(r.Header, h.MaxRecipients)
	if bad != nil {
		h.Log.Info("refused envelope", "code", bad.Code)
		return refusal(ResultBadEnvelope, *bad)
	}
	log := h.Log.With(logging.Addr(env.From), "recipients", len(env.To))
	for _, rcpt := range env.To {
		if !h.Mail.Serves(domainOf(rcpt)) {
			log.Info("refused recipient not of ours", logging.Addr(rcpt))
			return refusal(ResultNotLocal, ReplyRelayDenied)
		}
	}
	// The raw body may be at most twice the message: dot-stuffing adds a
	// byte to some lines, and LF line ends become CRLF only in the message.
	maxRaw := 2*h.MaxMessageSize + 1024
	if r.ContentLength > maxRaw {
		return refusal(ResultTooLarge, ReplyTooLarge)
	}
	dec := NewDecoder(http.MaxBytesReader(w, r.Body, maxRaw), env.Stuffed, h.MaxMessageSize)
	br := bufio.NewReaderSize(dec, 64<<10)
	hdr, err := readHeader(br)
	if err != nil {
		return h.bodyFault(log, err)
	}

	txn := h.Engine.Begin("", env.From)
	defer txn.Close()
	for _, rcpt := range env.To {
		if v := txn.Rcpt(rcpt); v != nil {
			h.Metrics.Verdicts.WithLabelValues(string(v.Reason)).Inc()
			return refusal(ResultPolicy, v.Reply)
		}
	}
	sp := &spool{dir: h.SpoolDir}
	defer sp.close()
	sw := &spoolWriter{s: sp}
	v, err := mailpolicy.Replay(ctx, txn, io.MultiReader(bytes.NewReader(hdr), io.TeeReader(br, sw)))
	if err != nil {
		if sw.err != nil {
			log.Error("cannot spool the message", "err", sw.err)
			return refusal(ResultInternal, mailpolicy.ReplyInternal)
		}
		return h.bodyFault(log, err)
	}
	h.Metrics.Verdicts.WithLabelValues(string(v.Reason)).Inc()
	if !v.Reply.Accepted() {
		log.Info("refused by the mail rules", "reason", v.Reason)
		return refusal(ResultPolicy, v.Reply).tempAs(ResultPolicyTemp)
	}
	if v.Reason == mailpolicy.ReasonNotChatmail {
		// Every recipient is ours, so the rules apply: a bug, never a
		// pass.
		log.Error("the mail rules did not apply to mail for chatmail users")
		return refusal(ResultInternal, mailpolicy.ReplyInternal)
	}

	// Paced by the registered domain of the signer: a relaxed-aligned
	// signature lets its owner vary the From domain's subdomains, and a
	// wildcard key record the d='s, never the domain it registered.
	pacedBy := txn.DKIMSigner()
	if pacedBy == "" {
		pacedBy = fromDomain(hdr)
	}
	if reg, err := publicsuffix.EffectiveTLDPlusOne(pacedBy); err == nil {
		pacedBy = reg
	}
	if o, ok := h.checkRecipients(ctx, log, env.To, pacedBy); !ok {
		return o
	}

	head, err := mailpolicy.Apply(hdr, v)
	if err != nil {
		log.Error("cannot apply the header changes", "err", err)
		return refusal(ResultInternal, mailpolicy.ReplyInternal)
	}
	head = bytes.ReplaceAll(head, []byte("\n"), []byte("\r\n"))
	body, err := sp.reader()
	if err != nil {
		log.Error("cannot read the spooled message", "err", err)
		return refusal(ResultInternal, mailpolicy.ReplyInternal)
	}
	o := h.lmtp(ctx, log, env, io.MultiReader(bytes.NewReader(head), body))
	if o.status == http.StatusOK {
		h.Metrics.Recipients.Add(float64(len(env.To)))
		h.Metrics.Size.Observe(float64(int64(len(head)) + txn.Size()))
		log.Info("delivered", "reason", v.Reason)
	}
	return o
}

// tempAs relabels a temporary answer.
func (o outcome) tempAs(result string) outcome {
	if o.status == http.StatusServiceUnavailable {
		o.result = result
	}
	return o
}

// bodyFault answers a body that could not be read or decoded.
func (h *Handler) bodyFault(log *slog.Logger, err error) outcome {
	var mbe *http.MaxBytesError
	var reply mailpolicy.Reply
	var rerr *ReadError
	switch {
	case errors.As(err, &mbe):
		return refusal(ResultTooLarge, ReplyTooLarge)
	case errors.As(err, &reply):
		if reply == ReplyMalformed {
			return refusal(ResultMalformed, reply)
		}
		return refusal(ResultTooLarge, reply)
	case errors.As(err, &rerr):
		// The sender went away or was too slow; it gets no answer, or a
		// temporary one.
		// Its error text names the peer's address: the kind only.
		log.Info("cannot read the message", "cause", readErrKind(rerr))
		return refusal(ResultReadError, ReplyReadFailed)
	}
	// mailpolicy.Replay's own: a header line it cannot parse.
	log.Info("malformed message", "err", err)
	return refusal(ResultMalformed, mailpolicy.ReplyBadHeader)
}

// checkRecipients looks every recipient up; ok means all have accounts
// that are not blocked.
func (h *Handler) checkRecipients(ctx context.Context, log *slog.Logger, rcpts []string, from string) (outcome, bool) {
	if h.Ready != nil && !h.Ready() {
		return refusal(ResultStoreUnavailable, ReplyStoreDown), false
	}
	if h.Unknown != nil && h.Unknown.Limited(from) {
		return refusal(ResultUnknownLimited, ReplyUnknownPaced), false
	}
	unknown := 0
	for _, rcpt := range rcpts {
		c, err := h.Accounts.Credentials(ctx, rcpt)
		switch {
		case errors.Is(err, accounts.ErrNotFound):
			log.Info("unknown recipient", logging.Addr(rcpt))
			unknown++
		case err != nil:
			log.Warn("cannot look up a recipient", "err", err)
			return refusal(ResultStoreUnavailable, ReplyStoreDown), false
		case c.Blocked:
			log.Info("blocked recipient", logging.Addr(rcpt))
			unknown++
		}
	}
	if unknown == 0 {
		return outcome{}, true
	}
	if h.Unknown != nil && !h.Unknown.Allow(from) {
		log.Warn("unknown recipients: sender domain paced", logging.Addr(from))
		return refusal(ResultUnknownLimited, ReplyUnknownPaced), false
	}
	return refusal(ResultUnknownRcpt, ReplyUnknownUser), false
}

// lmtp hands the message to Dovecot in one transaction.
func (h *Handler) lmtp(ctx context.Context, log *slog.Logger, env Envelope, msg io.Reader) outcome {
	c, err := lmtp.Dial(ctx, h.LMTPNetwork, h.LMTPAddr, "chatmail-mxdeliv", h.LMTPTimeout)
	if err != nil {
		log.Warn("lmtp unavailable", "err", lmtpErr(err))
		return refusal(ResultLMTPUnavailable, ReplyDeliveryDown)
	}
	defer func() { _ = c.Close() }() // after QUIT or a failure: nothing to report
	if err := c.Mail(env.From); err != nil {
		return h.lmtpRefused(log, "MAIL", err)
	}
	var refused error
	for _, rcpt := range env.To {
		if err := c.Rcpt(rcpt); err != nil {
			var r *lmtp.Reply
			if !errors.As(err, &r) {
				return h.lmtpRefused(log, "RCPT", err)
			}
			log.Info("lmtp refused a recipient", "code", r.Code, logging.Addr(rcpt))
			// A temporary refusal decides the answer over a permanent one.
			if refused == nil || r.Temporary() {
				refused = r
			}
		}
	}
	if refused != nil {
		// Nothing is delivered: the transaction ends before DATA.
		if err := c.Reset(); err != nil {
			log.Warn("lmtp RSET failed", "err", lmtpErr(err))
		}
		_ = c.Quit() // the answer is decided
		return h.lmtpRefused(log, "RCPT", refused)
	}
	replies, err := c.Data(msg, len(env.To))
	if err != nil {
		var r *lmtp.Reply
		if errors.As(err, &r) { // DATA itself refused: nothing delivered
			return h.lmtpRefused(log, "DATA", err)
		}
		// Unknown for some recipients: the sender tries again.
		log.Warn("lmtp failed during DATA", "err", lmtpErr(err), "answered", len(replies))
		return refusal(ResultLMTPPartial, ReplyPartial)
	}
	ok, temp := 0, 0
	var first, firstTemp *lmtp.Reply
	for i, r := range replies {
		switch {
		case r.OK():
			ok++
			continue
		case r.Temporary():
			temp++
			if firstTemp == nil {
				firstTemp = r
			}
		}
		if first == nil {
			first = r
		}
		log.Info("lmtp did not deliver", "code", r.Code, logging.Addr(env.To[i]))
	}
	_ = c.Quit() // delivered or not, it is decided
	switch {
	case ok == len(replies):
		return outcome{http.StatusOK, ResultDelivered, ReplyOK}
	case ok == 0 && temp == 0:
		return answer(http.StatusBadRequest, ResultLMTPRefused, asPolicyReply(first))
	case ok == 0:
		// A temporary failure decides over a permanent one (as at RCPT):
		// else the sender bounces a recipient that would have been
		// delivered later, with another recipient's reply.
		return refusal(ResultLMTPRefused, asPolicyReply(firstTemp)).tempAs(ResultLMTPRefused)
	}
	log.Warn("lmtp delivered to some recipients only: asking the sender to send again", "delivered", ok)
	return refusal(ResultLMTPPartial, ReplyPartial)
}

// lmtpRefused answers an LMTP refusal or failure at cmd.
func (h *Handler) lmtpRefused(log *slog.Logger, cmd string, err error) outcome {
	var r *lmtp.Reply
	if !errors.As(err, &r) {
		log.Warn("lmtp failed", "command", cmd, "err", lmtpErr(err))
		return refusal(ResultLMTPUnavailable, ReplyDeliveryDown)
	}
	log.Info("lmtp refused", "command", cmd, "code", r.Code)
	if r.Temporary() {
		return answer(http.StatusServiceUnavailable, ResultLMTPRefused, asPolicyReply(r))
	}
	return answer(http.StatusBadRequest, ResultLMTPRefused, asPolicyReply(r))
}

// asPolicyReply passes Dovecot's reply on: it names only addresses the
// sender gave.
func asPolicyReply(r *lmtp.Reply) mailpolicy.Reply {
	enh, text, ok := strings.Cut(strings.ReplaceAll(r.Text, "\n", " "), " ")
	if !ok || !enhanced(enh) {
		enh, text = "", strings.ReplaceAll(r.Text, "\n", " ")
	}
	if enh == "" {
		enh = map[bool]string{true: "4.0.0", false: "5.0.0"}[r.Temporary()]
	}
	return mailpolicy.Reply{Code: r.Code, Enhanced: enh, Text: text}
}

// enhanced reports an RFC 3463 status code, e.g. 5.1.1.
func enhanced(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// lmtpErr is what of an LMTP failure may be logged: Dovecot's reply text
// may name a recipient, so a reply is logged by its code only.
func lmtpErr(err error) any {
	var r *lmtp.Reply
	if errors.As(err, &r) {
		return r.Code
	}
	return err
}

// fromDomain is the domain of the message's From address, lower-cased;
// the rules accepted the message, so it holds exactly one address.
func fromDomain(hdr []byte) string {
	m, err := mail.ReadMessage(bytes.NewReader(hdr))
	if err != nil {
		return ""
	}
	list, err := m.Header.AddressList("From")
	if err != nil || len(list) != 1 {
		return ""
	}
	return strings.ToLower(domainOf(list[0].Address))
}

// spoolWriter remembers the spool's failure, which is ours, not the
// sender's.
type spoolWriter struct {
	s   *spool
	err error
}

func (w *spoolWriter) Write(p []byte) (int, error) {
	n, err := w.s.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}
