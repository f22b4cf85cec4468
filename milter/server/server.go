// Package server runs the mail rules as a Postfix milter
// (emersion/go-milter) on a connserve server, which tracks sessions so that
// a shutdown lets messages in progress finish, and exports metrics.
//
// Postfix's wiring is in deploy/postfix. The milter needs {auth_authen} with MAIL FROM (Postfix's default
// milter_mail_macros include it); it tells submissions (outgoing) from
// incoming mail.
//
// It asks for header values with their leading space (SMFIP_HDR_LEADSPC,
// which Postfix honours whatever protocol version the milter announces),
// so that DKIM simple canonicalization sees "Subject:x" and "Subject:\tx"
// as written; fields it adds therefore carry their own leading space.
package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/textproto"
	"time"

	"github.com/emersion/go-milter"

	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/daemon"
	"chatmail.dev/sidecar/logging"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/unixsock"
)

// DrainTimeout is the milter's drain budget, from SIGTERM to exit: a
// message in progress is answered within it (its own bound, EndTimeout, is
// kept below the servers' share, daemon.Env.ShutdownTimeout).
// deploy/systemd/chatmail-milter.service sets TimeoutStopSec above it.
const DrainTimeout = 30 * time.Second

// Run serves the milter socket until ctx ends, then drains.
func Run(ctx context.Context, env *daemon.Env, cfg *Config) error {
	engine, err := mailpolicy.NewEngine(env.Config, &cfg.Config, env.Log)
	if err != nil {
		return err
	}
	ln, err := Listen(cfg)
	if err != nil {
		return err
	}
	s := New(engine, env.Log, NewMetrics(env.Registry))
	s.Panics = env.Panics
	// Room for the DKIM key lookups, but never more than a drain leaves a
	// message in progress (the default, 25 s, fits in 28 s).
	s.EndTimeout = min(2*cfg.DNSTimeout.D()+5*time.Second, env.ShutdownTimeout())
	env.Log.Info("entering serving loop", "listen", cfg.Listen)
	return env.Serve(ctx, daemon.On(s, ln))
}

// Server serves the milter protocol.
type Server struct {
	engine  *mailpolicy.Engine
	log     *slog.Logger
	metrics *Metrics
	// EndTimeout bounds the end-of-message decision (DKIM key lookups).
	EndTimeout time.Duration
	// Panics, if set, counts the panics recovered in callbacks.
	Panics connserve.Counter

	conns connserve.Server
}

// New returns a server deciding with engine.
func New(engine *mailpolicy.Engine, log *slog.Logger, m *Metrics) *Server {
	return &Server{engine: engine, log: log, metrics: m, EndTimeout: 30 * time.Second}
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = connserve.ErrServerClosed

// Serve accepts milter connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.conns.Log, s.conns.Panics = s.log, s.Panics
	return s.conns.Serve(ln, s.serveConn)
}

// Shutdown stops accepting, closes idle sessions, waits for sessions with
// a message in progress to answer it and end, and returns; or closes what
// is left when ctx ends first.
func (s *Server) Shutdown(ctx context.Context) error { return s.conns.Shutdown(ctx) }

// serveConn serves one connection with its own go-milter server, so that
// the backends of a connection know it: go-milter never calls Abort when
// the MTA goes away in the middle of a message, so the connection ends the
// transaction in progress when it is closed. It returns when the session
// has ended.
func (s *Server) serveConn(cc *connserve.Conn) {
	w := newConn(cc)
	s.metrics.Sessions.Inc()
	defer s.metrics.Sessions.Dec()
	ms := &milter.Server{
		NewMilter: func() milter.Milter { return &backend{s: s, c: w} },
		Actions:   milter.OptAddHeader | milter.OptChangeHeader,
		Protocol:  protocol,
	}
	// go-milter serves the session in a goroutine of its own; oneConn's
	// second Accept returns once the session has closed the connection.
	_ = ms.Serve(&oneConn{c: w}) // always the end of oneConn, nothing to report
}

// protocol asks Postfix for the events the policy needs and to wait for a
// reply only where one can refuse: at RCPT and at the end of the message.
// Every reply Postfix waits for is a round trip and a context switch each
// way, which is most of what a milter costs it. Decisions that could be
// made at MAIL or at the end of the header section wait for the end of
// the message instead: the client sees the same reply, a little later.
const protocol = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoUnknown | milter.OptNoData |
	milter.OptNoMailReply | milter.OptNoHeaderReply | milter.OptNoEOHReply | milter.OptNoBodyReply |
	milter.OptHeaderLeadingSpace

// Listen opens the listener for a [milter] listen address. For a unix
// socket it removes a stale socket first and sets mode and group.
func Listen(cfg *Config) (net.Listener, error) {
	if _, _, err := unixsock.ParseAddr(cfg.Listen); err != nil {
		return nil, &config.Error{Key: "milter.listen", Msg: err.Error()}
	}
	return unixsock.ListenAddr(cfg.Listen, uint32(cfg.SocketMode), cfg.SocketGroup)
}

// backend handles the callbacks of one message. go-milter makes a new one
// after each final answer, so it holds nothing beyond the message.
//
// Only RcptTo and Body answer (see protocol); the other callbacks return a
// nil response, which go-milter does not send. What they would have
// answered waits in pending for the next callback that answers.
type backend struct {
	s       *Server
	c       *conn
	txn     *mailpolicy.Txn
	pending *mailpolicy.Verdict // the decision on the message, taken early
	counted bool                // a verdict for this message was counted
	queueID string
}

// setTxn makes t the transaction in progress, closing the previous one.
func (b *backend) setTxn(t *mailpolicy.Txn) {
	if b.txn != nil {
		b.txn.Close()
	}
	b.txn = t
	if b.c != nil {
		b.c.setTxn(t)
	}
}

func (b *backend) count(v *mailpolicy.Verdict) {
	if !b.counted {
		b.counted = true
		b.s.metrics.Verdicts.WithLabelValues(v.Direction.String(), string(v.Reason)).Inc()
	}
}

// reply turns a refusal into the milter response carrying the SMTP reply.
func reply(r mailpolicy.Reply) milter.Response {
	return milter.NewResponseStr(byte(milter.ActReplyCode), r.String())
}

// internal is the verdict on a message whose handling failed.
func internal(dir mailpolicy.Direction) *mailpolicy.Verdict {
	return &mailpolicy.Verdict{Direction: dir, Reason: mailpolicy.ReasonInternal, Reply: mailpolicy.ReplyInternal}
}

// direction is the message's, or incoming before the transaction exists.
func (b *backend) direction() mailpolicy.Direction {
	if b.txn != nil {
		return b.txn.Direction()
	}
	return mailpolicy.Incoming
}

// guard turns a panic in a callback into a temporary failure: the answer
// itself if the callback answers, else the decision pending for the next
// answer.
func (b *backend) guard(answer bool, resp *milter.Response, err *error) {
	if p := recover(); p != nil {
		b.s.conns.Recovered(p) // logged and counted
		v := internal(b.direction())
		b.setTxn(nil)
		*resp, *err = nil, nil
		// Pending as well when answered now: the next RCPT or the end of
		// the message gets the same temporary failure.
		b.pending = v
		if answer {
			b.count(v)
			*resp = reply(v.Reply)
		}
	}
}

func (b *backend) Connect(string, string, uint16, net.IP, *milter.Modifier) (milter.Response, error) {
	return nil, nil // not sent (SMFIP_NOCONNECT)
}

func (b *backend) Helo(string, *milter.Modifier) (milter.Response, error) {
	return nil, nil // not sent (SMFIP_NOHELO)
}

// MailFrom starts the message; it has no answer (SMFIP_NR_MAIL).
func (b *backend) MailFrom(from string, m *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(false, &resp, &err)
	b.counted = false
	b.pending = nil
	b.queueID = m.Macros["i"]
	b.setTxn(b.s.engine.Begin(m.Macros["{auth_authen}"], from))
	if b.queueID != "" {
		b.txn.With(logging.MsgID(b.queueID))
	}
	return nil, nil
}

func (b *backend) RcptTo(rcpt string, m *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(true, &resp, &err)
	if b.pending != nil {
		// MAIL failed: refuse every recipient with its temporary reply.
		b.count(b.pending)
		return reply(b.pending.Reply), nil
	}
	if b.txn == nil {
		return nil, errors.New("RCPT before MAIL")
	}
	if v := b.txn.Rcpt(rcpt); v != nil {
		// Not the verdict on the message: other recipients may be
		// accepted and the message judged.
		b.s.metrics.RcptRefusals.WithLabelValues(string(v.Reason)).Inc()
		return reply(v.Reply), nil
	}
	return milter.RespContinue, nil
}

// Header records a field; it has no answer (SMFIP_NR_HDR).
func (b *backend) Header(name, value string, m *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(false, &resp, &err)
	if b.pending != nil {
		return nil, nil
	}
	if b.txn == nil {
		return nil, errors.New("header before MAIL")
	}
	b.txn.Header(name, value)
	return nil, nil
}

// Headers ends the header section; it has no answer (SMFIP_NR_EOH), so a
// decision taken here waits for the end of the message.
func (b *backend) Headers(textproto.MIMEHeader, *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(false, &resp, &err)
	if b.pending != nil {
		return nil, nil
	}
	if b.txn == nil {
		return nil, errors.New("end of header before MAIL")
	}
	if v := b.txn.EndHeaders(); v != nil {
		b.pending = v
		b.setTxn(nil) // nothing more to look at
	}
	return nil, nil
}

// BodyChunk streams a body chunk; it has no answer (SMFIP_NR_BODY).
func (b *backend) BodyChunk(chunk []byte, m *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(false, &resp, &err)
	if b.pending != nil {
		return nil, nil
	}
	if b.txn == nil {
		return nil, errors.New("body before MAIL")
	}
	b.txn.Body(chunk)
	return nil, nil
}

// Body is the end of the message, where the decision is answered.
func (b *backend) Body(m *milter.Modifier) (resp milter.Response, err error) {
	defer b.guard(true, &resp, &err)
	if b.pending != nil {
		return b.final(b.pending, m)
	}
	if b.txn == nil {
		return nil, errors.New("end of body before MAIL")
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), b.s.EndTimeout)
	defer cancel()
	v := b.txn.End(ctx)
	b.s.metrics.Size.Observe(float64(b.txn.Size()))
	resp, err = b.final(v, m)
	b.s.metrics.Latency.WithLabelValues(v.Direction.String()).Observe(time.Since(start).Seconds())
	return resp, err
}

// final answers a decision on the whole message, applying its changes.
func (b *backend) final(v *mailpolicy.Verdict, m *milter.Modifier) (milter.Response, error) {
	defer b.setTxn(nil)
	b.pending = nil
	if v.Reply.Accepted() && m != nil {
		if err := apply(v, m); err != nil {
			b.s.log.Error("cannot modify message", "err", err)
			v = internal(v.Direction)
		}
	}
	b.count(v)
	if v.Reply.Accepted() {
		return milter.RespAccept, nil
	}
	return reply(v.Reply), nil
}

func apply(v *mailpolicy.Verdict, m *milter.Modifier) error {
	for _, c := range v.Changes {
		// An empty value deletes the field (SMFIR_CHGHEADER); with
		// SMFIP_HDR_LEADSPC, Postfix writes any other as is after the colon.
		value := c.Value
		if value != "" {
			value = " " + value
		}
		if err := m.ChangeHeader(c.Index, c.Name, value); err != nil {
			return err
		}
	}
	for _, f := range v.Add {
		// With SMFIP_HDR_LEADSPC, Postfix adds the value as is.
		if err := m.AddHeader(f.Name, " "+f.Value); err != nil {
			return err
		}
	}
	return nil
}

func (b *backend) Abort(*milter.Modifier) error {
	b.setTxn(nil)
	b.pending = nil
	return nil
}
