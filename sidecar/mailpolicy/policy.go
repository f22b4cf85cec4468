// Package policy holds the chatmail rules for one SMTP transaction: which
// mail must be encrypted, the few cleartext exceptions, sender identity,
// rate and recipient limits, header stripping, DKIM signing and
// verification. The milter and the check tool both drive a Txn with the
// same calls, so both give the same answer.
//
// Scope: a message is subject to the rules when its sender is a chatmail
// user (SASL-authenticated, or the envelope sender, in a chatmail domain;
// the "outgoing" rules) or when any recipient is in a chatmail domain
// (unauthenticated mail: the "incoming" rules). Authenticated users of
// other domains on a mixed server get only the encryption rule, and only
// when they write to chatmail users. Everything else passes untouched.
//
// The direction comes only from {auth_authen}. Unauthenticated mail whose
// envelope sender is in a chatmail domain, or is not a plain address (see
// below), is in scope too and gets the incoming rules, whoever it goes to:
// a chatmail address never sends cleartext unauthenticated.
//
// Scope is decided on the envelope addresses as the client wrote them,
// before the MTA rewrites them, so an address counts as a chatmail one
// unless it is plainly not: a recipient (or unauthenticated sender) that
// is not a plain local@domain (a dot-atom local part without '%' or '!',
// and a domain name) puts the message in scope. This covers the percent
// hack (bob%chat.example@[192.0.2.1]), bang paths (chat.example!bob@...),
// source routes (@a.example:bob@chat.example), address literals and
// quoted local parts, which Postfix may route to a chatmail mailbox. Such
// recipients are not refused: encrypted mail to them passes, cleartext is
// refused with the usual 523 at the end of the message. Postfix should
// still set allow_percent_hack = no and swap_bangpath = no.
//
// Local parts are compared case-insensitively in the identity checks
// (SASL login, envelope sender, From), as Dovecot lower-cases logins.
//
// Decisions on cleartext that the existing relay left open:
//
//   - Legacy Secure-Join requests pass in both directions to anyone, only
//     in the shape Delta Chat cores send them: a single Secure-Join field
//     "vc-request" or "vg-request", a header section of at most
//     maxSecureJoinHeader bytes, multipart/mixed with blank-only preamble
//     and epilogue and one part whose header is only Content-Type
//     text/plain (a short charset allowed), optionally
//     Content-Transfer-Encoding 7bit and a Message-ID (cores before 2.x),
//     and whose body, trimmed and case-folded, is "secure-join: " and the
//     same step as the field (pgpmime.Result.SoleText). The header policy
//     (headers.go) leaves only the allowlisted fields of it.
//   - The armor's one Version header passes incoming only; Delta Chat
//     writes none.
//   - The Autocrypt Setup Message no longer passes: Delta Chat 2.x does not
//     send it (a second device is set up by backup transfer), and what
//     older cores sent could not be judged without decrypting.
//   - Bounces pass incoming only: From mailer-daemon@ (any case), null
//     envelope sender (RFC 5321 4.5.5: DSNs are sent with MAIL FROM:<>),
//     Auto-Submitted an RFC 3834 keyword but "no", top-level
//     multipart/report with report-type=delivery-status, and a body in the
//     shape MTAs write (package bounce). Like all incoming mail they need
//     an aligned DKIM signature.
//   - Cleartext MDNs are rejected: Delta Chat sends them encrypted, and the
//     relay dropped them on purpose (chatmail/relay #320).
//   - The Subject is replaced by "[...]", what Delta Chat writes.
//   - No incoming mail skips DKIM: a From with an address literal
//     (user@[192.0.2.1]) cannot be aligned, so it is refused, bounces
//     included (the relay let such mail through unsigned).
package mailpolicy

import (
	"cmp"
	"context"
	"log/slog"
	"net/textproto"
	"strings"
	"sync"
	"time"

	"chatmail.dev/sidecar/bounce"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/dkimstream"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/pgpmime"
)

// maxHeader bounds the header section kept per message; Postfix's own
// header_size_limit is 100 KiB.
const maxHeader = 256 << 10

// maxFieldLines bounds the lines of one header field. Delta Chat's longest
// is an Autocrypt key (about 150 lines at MaxAutocryptKey), an older
// core's To of a big group a few hundred. It also bounds DKIM
// verification, which copies a field once per line as it unfolds it
// (go-msgauth): at most maxFieldLines times the header section.
const maxFieldLines = 1000

// maxSecureJoinHeader bounds the header section of a cleartext Secure-Join
// request; Delta Chat's is about 1 KiB with an Ed25519 Autocrypt key, and
// trace and signature fields of a big provider may add a few. Only the
// allowlisted fields of it are kept.
const maxSecureJoinHeader = 16 << 10

// judges keeps judges, with their buffers, from one message to the next.
var judges = sync.Pool{New: func() any { return pgpmime.NewJudge(nil, nil) }}

// Direction says which rules apply.
type Direction int

const (
	Incoming Direction = iota
	Outgoing
)

func (d Direction) String() string {
	if d == Outgoing {
		return "out"
	}
	return "in"
}

// Reason is why a message was accepted or refused: a closed set, used as a
// metric label.
type Reason string

const (
	ReasonEncrypted      Reason = "encrypted"
	ReasonSecureJoin     Reason = "securejoin"
	ReasonBounce         Reason = "bounce"
	ReasonNotChatmail    Reason = "not_chatmail"
	ReasonCleartext      Reason = "cleartext"
	ReasonBadFrom        Reason = "bad_from"
	ReasonBadSender      Reason = "bad_sender"
	ReasonBadHeader      Reason = "bad_header"
	ReasonDuplicateField Reason = "duplicate_field"
	ReasonRateLimited    Reason = "rate_limited"
	ReasonTooManyRcpts   Reason = "too_many_recipients"
	ReasonDKIMUnsigned   Reason = "dkim_unsigned"
	ReasonDKIMInvalid    Reason = "dkim_invalid"
	ReasonDKIMUnaligned  Reason = "dkim_unaligned"
	ReasonDKIMTempFail   Reason = "dkim_tempfail"
	ReasonHeaderSize     Reason = "header_too_large"
	ReasonInternal       Reason = "internal_error"
)

// Reasons lists the reasons of final verdicts on messages per direction,
// for pre-creating metric series.
var Reasons = map[Direction][]Reason{
	Outgoing: {ReasonEncrypted, ReasonSecureJoin, ReasonNotChatmail, ReasonCleartext,
		ReasonBadFrom, ReasonBadHeader, ReasonDuplicateField, ReasonHeaderSize, ReasonInternal},
	Incoming: {ReasonEncrypted, ReasonSecureJoin, ReasonBounce, ReasonNotChatmail, ReasonCleartext, ReasonBadFrom,
		ReasonBadSender, ReasonBadHeader, ReasonDuplicateField, ReasonDKIMUnsigned, ReasonDKIMInvalid, ReasonDKIMUnaligned, ReasonDKIMTempFail,
		ReasonHeaderSize, ReasonInternal},
}

// RcptReasons lists the reasons a recipient is refused at RCPT.
var RcptReasons = []Reason{ReasonBadSender, ReasonRateLimited, ReasonTooManyRcpts, ReasonInternal}

// Field is a header field.
type Field struct {
	// Name is canonical; Value is without the one space or tab that
	// usually follows the colon.
	Name, Value string
	// Raw and RawValue are the name and the value (everything after the
	// colon) as written; DKIM's simple canonicalization signs the exact
	// bytes, so the header is rebuilt from them. Empty Raw means Name.
	Raw, RawValue string
	// drop and repl are the header policy's decision: remove the field,
	// or give it the value repl.
	drop bool
	repl string
}

// Verdict is a decision on a message or, at RCPT, on one recipient.
type Verdict struct {
	Direction Direction
	Reason    Reason
	Reply     Reply
	// Changes and Add are made when the message is accepted; Changes is
	// ordered so that applying it in order keeps indexes valid.
	Changes []HeaderChange
	Add     []Field
	// delivered is the header section as the changes leave it, one
	// field a string, for Apply; set on accepting verdicts.
	delivered []string
	decided   bool
}

// keyCacheTTL is how long a DKIM key found stays in use without a new
// lookup: a changed or withdrawn key counts after at most this long.
const keyCacheTTL = time.Minute

// Engine holds what outlives a transaction.
type Engine struct {
	mail    *config.Mail
	cfg     *Config
	limiter *Limiter
	lookup  dkimstream.Lookup // nil: incoming DKIM not verified
	keys    map[string]*dkimstream.SignKey
	log     *slog.Logger
}

// NewEngine loads signing keys and sets up the DKIM lookup. A key that
// cannot be loaded is a *config.Error.
func NewEngine(common *config.Common, cfg *Config, log *slog.Logger) (*Engine, error) {
	e := &Engine{
		mail:    &common.Mail,
		cfg:     cfg,
		limiter: NewLimiter(cfg.RateBurst, cfg.RatePerSecond),
		keys:    make(map[string]*dkimstream.SignKey),
		log:     log,
	}
	if cfg.VerifyDKIM {
		var l dkimstream.Lookup = dkimstream.DNS{Timeout: cfg.DNSTimeout.D()}
		if cfg.DKIMKeysDir != "" {
			l = dkimstream.Dir(cfg.DKIMKeysDir)
		}
		e.lookup = dkimstream.NewCached(l, keyCacheTTL)
	}
	for _, d := range common.Mail.Domains {
		sel, file, key := cfg.DKIMSelector, cfg.DKIMKeyFile, "dkim_key_file"
		if k, ok := cfg.DKIMDomains[d]; ok {
			sel, file, key = k.Selector, k.KeyFile, "dkim_domains."+d
		}
		if file == "" {
			continue
		}
		k, err := dkimstream.LoadSignKey(d, sel, file)
		if err != nil {
			return nil, &config.Error{Key: "milter." + key, Msg: err.Error()}
		}
		e.keys[d] = k
	}
	return e, nil
}

// SetLookup replaces the DKIM key lookup (nil turns verification off).
func (e *Engine) SetLookup(l dkimstream.Lookup) { e.lookup = l }

// Txn is one message transaction. Call its methods in SMTP order: Mail,
// Rcpt for each recipient, Header for each field, EndHeaders, Body for each
// chunk, End; and Close in every case.
type Txn struct {
	e   *Engine
	log *slog.Logger

	dir        Direction
	auth       string // normalized SASL login, "" if none
	sender     string // normalized envelope sender, "" for <> and for what is no address
	nullSender bool   // MAIL FROM:<>
	rcpts      []string
	toChatmail bool   // some recipient is in a chatmail domain, or may be
	fromUnauth bool   // unauthenticated, but the sender may be a chatmail one
	fromLocal  bool   // the sender is a chatmail user
	rcptReply  *Reply // sticky refusal of every recipient
	rcptReason Reason

	fields      []Field
	hdrSize     int
	longestFold int // the most lines of one field
	changes     []HeaderChange
	scope       bool // the rules apply
	from        string
	dkimCount   int

	judge  *pgpmime.Judge
	report *bounce.Judge // set for what may be a bounce
	verify *dkimstream.Verifying
	// dkimSigner is the d= of the aligned signature that passed.
	dkimSigner string
	sign       *dkimstream.Signing
	err        error // internal failure while streaming
}

// Begin starts a transaction. auth is the SASL login ({auth_authen}), ""
// for unauthenticated sessions; sender is the MAIL FROM address.
func (e *Engine) Begin(auth, sender string) *Txn {
	t := &Txn{e: e, auth: normalize(auth), sender: normalize(sender),
		nullSender: strings.Trim(strings.TrimSpace(sender), "<>") == ""}
	if auth != "" {
		t.dir = Outgoing
		t.fromLocal = e.mail.Serves(domainOf(t.auth)) || e.mail.Serves(domainOf(t.sender))
	} else if !t.nullSender {
		t.fromUnauth = e.mayServe(t.sender)
	}
	t.log = e.log.With("dir", t.dir.String())
	return t
}

// Direction is the direction of the transaction.
func (t *Txn) Direction() Direction { return t.dir }

// Rcpt checks one recipient; nil means accept it.
func (t *Txn) Rcpt(rcpt string) *Verdict {
	if t.rcptReply != nil {
		return &Verdict{Direction: t.dir, Reason: t.rcptReason, Reply: *t.rcptReply}
	}
	r := normalize(rcpt)
	if t.fromLocal {
		if len(t.rcpts) >= t.e.cfg.MaxRecipients {
			// Only the excess recipients are refused; the client sends them
			// in another transaction (RFC 5321 4.5.3.1.10).
			return &Verdict{Direction: t.dir, Reason: ReasonTooManyRcpts, Reply: ReplyTooManyRcpts}
		}
		if len(t.rcpts) == 0 {
			// Decided once per message, at the first RCPT, so that the
			// client sees the refusal per recipient, as with the relay's
			// SMTP proxy (and its tests).
			switch {
			case !sameAddress(t.sender, t.auth):
				t.refuseAll(ReasonBadSender, ReplyBadSender)
			case !t.e.limiter.Allow(strings.ToLower(t.auth)):
				t.refuseAll(ReasonRateLimited, rateLimited(t.auth))
			}
			if t.rcptReply != nil {
				t.log.Info("refused sender", "reason", t.rcptReason, logging.User(t.auth), logging.Addr(t.sender))
				return &Verdict{Direction: t.dir, Reason: t.rcptReason, Reply: *t.rcptReply}
			}
		}
	}
	t.rcpts = append(t.rcpts, r)
	if t.e.mayServe(r) {
		t.toChatmail = true
	}
	return nil
}

// mayServe reports whether the normalized address addr may reach a
// chatmail mailbox: it is in a chatmail domain or is not a plain address
// ("" included), so the MTA might rewrite it into one.
func (e *Engine) mayServe(addr string) bool {
	return !plainAddress(addr) || e.mail.Serves(domainOf(addr))
}

func (t *Txn) refuseAll(reason Reason, r Reply) {
	t.rcptReply, t.rcptReason = &r, reason
}

// Header records one header field as the MTA passes it with
// SMFIP_HDR_LEADSPC: the name, and the value as written after the colon,
// leading space included.
func (t *Txn) Header(name, value string) {
	t.hdrSize += len(name) + len(value) + 3
	t.longestFold = max(t.longestFold, 1+strings.Count(value, "\n"))
	if t.hdrSize > maxHeader {
		return
	}
	// "Content-Type :" is the Content-Type field for MIME parsers too.
	canon := textproto.CanonicalMIMEHeaderKey(strings.Trim(name, " \t"))
	v := value
	if v != "" && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	t.fields = append(t.fields, Field{Name: canon, Value: v, Raw: name, RawValue: value})
}

// values returns the values of the fields called name (canonical form).
func (t *Txn) values(name string) []string {
	var v []string
	for _, f := range t.fields {
		if f.Name == name {
			v = append(v, f.Value)
		}
	}
	return v
}

// EndHeaders is called after the last field. A non-nil verdict is final.
func (t *Txn) EndHeaders() *Verdict {
	if t.hdrSize > maxHeader {
		return t.final(ReasonHeaderSize, ReplyHeaderTooLarge)
	}
	if t.longestFold > maxFieldLines {
		return t.final(ReasonHeaderSize, ReplyFoldedTooOften)
	}
	t.scope = t.fromLocal || t.toChatmail || t.fromUnauth
	if !t.scope {
		return t.accept(ReasonNotChatmail)
	}
	froms := t.values("From")
	if len(froms) == 1 {
		t.from = headerAddress(froms[0])
	}
	if t.fromLocal && (!sameAddress(t.from, t.auth) || !sameAddress(t.from, t.sender)) {
		t.log.Info("refused From", logging.User(t.auth), logging.Addr(t.from))
		return t.final(ReasonBadFrom, ReplyBadFrom)
	}
	if t.dir == Incoming && t.from == "" {
		return t.final(ReasonBadFrom, ReplyBadFromIncoming)
	}
	if t.dir == Incoming && !t.nullSender && !boundedAddress(t.sender) {
		// The delivery agent writes the envelope sender into the stored
		// header (Return-Path).
		return t.final(ReasonBadSender, ReplyBadEnvelope)
	}
	if t.fromLocal && !t.sendersOK() {
		t.log.Info("refused Sender or Reply-To", logging.User(t.auth))
		return t.final(ReasonBadFrom, ReplyBadSenderField)
	}
	changes, refused := t.headerPolicy()
	if refused != nil {
		return refused
	}
	t.changes = changes
	t.judge = judges.Get().(*pgpmime.Judge)
	t.judge.Reset(t.values("Content-Type"), t.values("Content-Transfer-Encoding"))
	if t.mayBeBounce() {
		t.report = bounce.NewJudge()
		t.report.Reset(t.values("Content-Type"), t.values("Content-Transfer-Encoding"))
	}
	t.dkimCount = len(t.values("Dkim-Signature"))

	var w []func(p []byte) (int, error)
	if t.fromLocal {
		names := make([]string, 0, len(t.fields))
		for _, f := range t.fields {
			if !f.drop {
				names = append(names, f.Name)
			}
		}
		if key := t.e.keys[domainOf(t.from)]; key != nil {
			s, err := dkimstream.Sign(key, names)
			if err != nil {
				t.err = err
			} else {
				t.sign = s
				w = append(w, s.Write)
			}
		}
	} else if t.dir == Incoming && t.e.lookup != nil && t.dkimCount > 0 && t.candidate() {
		t.verify = dkimstream.Verify(t.e.lookup)
		w = append(w, t.verify.Write)
	}
	for _, write := range w {
		if err := writeHeader(write, t.fields, t.fromLocal); err != nil && t.err == nil {
			t.err = err
		}
	}
	return nil
}

// candidate reports whether the message may pass the encryption rule or
// an exception, so that DKIM verification (and its DNS queries) is only
// started for those.
func (t *Txn) candidate() bool { return len(t.rules(t.judge.MediaType())) > 0 }

// rules lists the rules that a message with top-level media type mt can
// pass in this transaction, in the order classify tries them. It holds the
// media-type and direction conditions of every rule, for classify and
// candidate both.
func (t *Txn) rules(mt string) []Reason {
	switch mt {
	case "multipart/encrypted":
		return []Reason{ReasonEncrypted}
	case "multipart/mixed":
		return []Reason{ReasonSecureJoin}
	case "multipart/report":
		if t.dir == Incoming {
			return []Reason{ReasonBounce}
		}
	}
	return nil
}

// writeHeader writes the header section as the fields were received;
// with changed set, as the header policy leaves it.
func writeHeader(write func([]byte) (int, error), fields []Field, changed bool) error {
	var b strings.Builder
	for _, f := range fields {
		switch {
		case changed && f.drop:
			continue
		case changed && f.repl != "":
			// As the MTA writes a changed field: the name as given, the
			// value after one space.
			b.WriteString(cmp.Or(f.Raw, f.Name))
			b.WriteString(": ")
			b.WriteString(f.repl)
		case f.Raw != "":
			b.WriteString(f.Raw)
			b.WriteString(":")
			b.WriteString(lf2crlf(f.RawValue))
		default:
			b.WriteString(f.Name)
			b.WriteString(": ")
			b.WriteString(lf2crlf(f.Value))
		}
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n")
	_, err := write([]byte(b.String()))
	return err
}

// crlf2lf turns line ends into LF, as Apply writes them.
func crlf2lf(v string) string { return strings.ReplaceAll(v, "\r\n", "\n") }

// lf2crlf turns line ends into CRLF; folded values come with bare LF from
// Postfix.
func lf2crlf(v string) string {
	return strings.ReplaceAll(strings.ReplaceAll(v, "\r\n", "\n"), "\n", "\r\n")
}

// Body streams one body chunk.
func (t *Txn) Body(chunk []byte) {
	if t.judge == nil {
		return
	}
	t.judge.Write(chunk)
	if t.report != nil {
		t.report.Write(chunk)
	}
	if t.sign != nil {
		if _, err := t.sign.Write(chunk); err != nil && t.err == nil {
			t.err = err
		}
	}
	if t.verify != nil {
		if _, err := t.verify.Write(chunk); err != nil && t.err == nil {
			t.err = err
		}
	}
}

// Size is the number of body bytes seen.
func (t *Txn) Size() int64 {
	if t.judge == nil {
		return 0
	}
	return t.judge.Size()
}

// End decides on the message.
func (t *Txn) End(ctx context.Context) *Verdict {
	if t.judge == nil {
		// EndHeaders was skipped (the MTA had no header fields to send).
		if v := t.EndHeaders(); v != nil {
			return v
		}
	}
	if t.err != nil {
		t.log.Error("internal failure", "err", t.err)
		return t.final(ReasonInternal, ReplyInternal)
	}
	res := t.judge.Close()
	reason, ok := t.classify(res)
	if !ok {
		t.log.Info(t.phrase("Filtering unencrypted mail."))
		t.log.Info("Rejected unencrypted mail", "why", res.Encrypted, logging.Addr(t.from))
		return t.final(ReasonCleartext, ReplyCleartext)
	}
	if reason == ReasonEncrypted {
		t.log.Info(t.phrase("Filtering encrypted mail."))
	} else {
		t.log.Info("cleartext exception", "reason", reason, logging.Addr(t.from))
	}
	// No sender skips DKIM, bounces and address literals included: a
	// literal From can have no aligned signature, so it is refused.
	if t.dir == Incoming && t.e.lookup != nil {
		if v := t.checkDKIM(ctx); v != nil {
			return v
		}
	}
	v := t.accept(reason)
	v.Changes = t.changes
	if t.fromLocal {
		if t.sign != nil {
			sig, err := t.sign.Finish()
			t.sign = nil
			if err != nil {
				t.log.Error("dkim signing failed", "err", err)
				return t.final(ReasonInternal, ReplyInternal)
			}
			v.Add = []Field{{Name: "DKIM-Signature", Value: sig}}
		}
	}
	return v
}

// phrase prefixes a log message the way the relay's mtail rules expect.
func (t *Txn) phrase(s string) string {
	if t.dir == Outgoing {
		return "Outgoing: " + s
	}
	return "Incoming: " + s
}

// classify applies the encryption rule and its exceptions.
func (t *Txn) classify(res pgpmime.Result) (Reason, bool) {
	for _, r := range t.rules(res.MediaType) {
		var ok bool
		switch r {
		case ReasonEncrypted:
			ok = res.Encrypted == nil && (t.dir == Incoming || res.ArmorHeaders == 0)
		case ReasonSecureJoin:
			ok = t.secureJoin(res)
		case ReasonBounce:
			ok = t.bounce()
		}
		if ok {
			return r, true
		}
	}
	return "", false
}

func (t *Txn) secureJoin(res pgpmime.Result) bool {
	sj := t.values("Secure-Join")
	if len(sj) != 1 || (sj[0] != "vc-request" && sj[0] != "vg-request") || t.hdrSize > maxSecureJoinHeader {
		return false
	}
	return strings.ToLower(res.SoleText) == "secure-join: "+sj[0]
}

// mayBeBounce reports whether the envelope and header are those of a
// bounce: incoming, null envelope sender (RFC 5321 4.5.5), From
// mailer-daemon@, Auto-Submitted an RFC 3834 keyword but "no", and a
// delivery report (RFC 3464) at the top level. The body decides.
func (t *Txn) mayBeBounce() bool {
	local, _, _ := strings.Cut(t.from, "@")
	if t.dir != Incoming || !asciiEqualFold(local, "mailer-daemon") || !t.nullSender {
		return false
	}
	as := t.values("Auto-Submitted")
	if len(as) != 1 {
		return false
	}
	// As the header policy reads it, so that a bounce keeps the field
	// that makes it one.
	if kw, ok := autoSubmitted(t, unfold(as[0])); !ok || kw == "no" {
		return false
	}
	return t.judge.MediaType() == "multipart/report" &&
		asciiEqualFold(t.judge.Params()["report-type"], "delivery-status")
}

// bounce reports whether the message is a bounce in a shape real MTAs
// send (package bounce): a short notice, a delivery report and at most the
// returned header or encrypted message.
func (t *Txn) bounce() bool {
	if t.report == nil {
		return false
	}
	err := t.report.Close()
	if err != nil {
		t.log.Info("not a bounce", "why", err)
	}
	return err == nil
}

// DKIMSigner is, once the message passed the DKIM check, the domain (d=)
// of its aligned signature, lower-case: the From domain or a parent of
// it, which the signer owns. "" before, or without a check.
func (t *Txn) DKIMSigner() string { return t.dkimSigner }

// checkDKIM requires an aligned valid signature; nil means it passed.
func (t *Txn) checkDKIM(ctx context.Context) *Verdict {
	if t.dkimCount == 0 {
		return t.final(ReasonDKIMUnsigned, ReplyUnsigned)
	}
	if t.verify == nil {
		// Not started although the message may pass: a bug, not the
		// sender's fault.
		t.log.Error("dkim verification was not started")
		return t.final(ReasonInternal, ReplyInternal)
	}
	out, err := t.verify.Result(ctx, domainOf(t.from))
	t.dkimSigner = t.verify.Signer()
	t.verify = nil
	if err != nil {
		t.log.Warn("dkim verification failed", "err", err)
	}
	switch out {
	case dkimstream.Pass:
		return nil
	case dkimstream.Unsigned:
		return t.final(ReasonDKIMUnsigned, ReplyUnsigned)
	case dkimstream.Invalid:
		return t.final(ReasonDKIMInvalid, ReplyInvalidSig)
	case dkimstream.Unaligned:
		return t.final(ReasonDKIMUnaligned, ReplyUnaligned)
	}
	return t.final(ReasonDKIMTempFail, ReplyDKIMTempFail)
}

func (t *Txn) final(reason Reason, r Reply) *Verdict {
	return &Verdict{Direction: t.dir, Reason: reason, Reply: r}
}

// accept is the accepting verdict, with the header as the header policy
// leaves it (as received when the rules do not apply).
func (t *Txn) accept(reason Reason) *Verdict {
	v := t.final(reason, ReplyAccepted)
	v.decided = true
	v.delivered = make([]string, 0, len(t.fields))
	for _, f := range t.fields {
		if f.drop {
			continue
		}
		name := cmp.Or(f.Raw, f.Name)
		switch {
		case f.repl != "":
			v.delivered = append(v.delivered, name+": "+f.repl)
		case f.Raw != "":
			v.delivered = append(v.delivered, name+":"+crlf2lf(f.RawValue))
		default:
			v.delivered = append(v.delivered, name+": "+crlf2lf(f.Value))
		}
	}
	return v
}

// Close releases what an unfinished transaction holds.
func (t *Txn) Close() {
	if t.sign != nil {
		t.sign.Abort()
		t.sign = nil
	}
	if t.verify != nil {
		t.verify.Abort()
		t.verify = nil
	}
	if t.judge != nil {
		judges.Put(t.judge)
		t.judge = nil
	}
}

// With adds attributes to the transaction's log lines.
func (t *Txn) With(attrs ...any) { t.log = t.log.With(attrs...) }
