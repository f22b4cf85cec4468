package sender

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Limits of what a peer's SMTP reply may hold.
const (
	maxReplyLines = 100
	maxReplyLine  = 2048
)

// errProtocol says a peer did not speak SMTP as we understand it.
var errProtocol = errors.New("malformed SMTP reply")

// errNoSTARTTLS says a peer did not offer STARTTLS, which we require.
var errNoSTARTTLS = errors.New("peer does not offer STARTTLS")

// readResponse reads one SMTP reply, single or multi-line, in bounded
// memory: at most maxReplyLines lines of at most maxReplyLine bytes.
func readResponse(r *bufio.Reader) (code int, lines []string, err error) {
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return 0, nil, errProtocol
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		if len(line) > maxReplyLine {
			return 0, nil, errProtocol
		}
		s := strings.TrimRight(string(line), "\r\n")
		if len(s) < 3 || (len(s) > 3 && s[3] != ' ' && s[3] != '-') {
			return 0, nil, errProtocol
		}
		c, err := strconv.Atoi(s[:3])
		if err != nil || c < 200 || c > 599 || (code != 0 && c != code) {
			return 0, nil, errProtocol
		}
		code = c
		lines = append(lines, s)
		if len(s) == 3 || s[3] == ' ' {
			return code, lines, nil
		}
		if len(lines) == maxReplyLines {
			return 0, nil, errProtocol
		}
	}
}

// peerReply turns a peer's reply lines into the Reply we pass on: its code,
// the enhanced code of the first line, and the texts joined. A reply that
// is no result (a 3xx where a command ends) is errProtocol: passed on, its
// line would not parse at Postfix, which then takes the next recipient's
// reply for this one's.
func peerReply(lines []string) (Reply, error) {
	first, ok := parseReplyLine(lines[0])
	if !ok {
		return Reply{}, errProtocol
	}
	var texts []string
	for i, l := range lines {
		t := ""
		if len(l) > 4 {
			t = l[4:]
		}
		if i > 0 {
			if enh, rest := splitEnhanced(t); enh != "" {
				t = rest
			}
		} else {
			t = first.Text
		}
		texts = append(texts, strings.TrimSpace(t))
	}
	first.Text = cleanText(strings.Join(texts, " "))
	if first.Text == "" {
		first.Text = "(no text)"
	}
	first.Via = ViaSMTP
	return first, nil
}

// smtpConn is one SMTP client session.
type smtpConn struct {
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
}

// cmd sends one command line and reads the reply.
func (c *smtpConn) cmd(line string) (int, []string, error) {
	_ = c.nc.SetDeadline(time.Now().Add(c.timeout)) // a failed deadline shows up as the I/O error below
	if line != "" {
		if _, err := c.w.WriteString(line + "\r\n"); err != nil {
			return 0, nil, err
		}
		if err := c.w.Flush(); err != nil {
			return 0, nil, err
		}
	}
	return readResponse(c.r)
}

// ehlo sends EHLO and returns the extension keywords offered, upper-cased.
func (c *smtpConn) ehlo(name string) (map[string]string, error) {
	code, lines, err := c.cmd("EHLO " + name)
	if err != nil {
		return nil, err
	}
	if code != 250 {
		return nil, fmt.Errorf("EHLO refused with %d", code)
	}
	ext := map[string]string{}
	for _, l := range lines[1:] {
		if len(l) <= 4 {
			continue
		}
		k, v, _ := strings.Cut(l[4:], " ")
		ext[strings.ToUpper(k)] = v
	}
	return ext, nil
}

// smtpJob is one delivery over SMTP to one host.
type smtpJob struct {
	t        target
	tls      *tls.Config
	from     string
	rcpts    []string
	body     *Body
	eightBit bool
}

// deliverSMTP delivers job over SMTP with STARTTLS. It returns one reply
// per recipient once the peer answered for them, or an error when the
// host could not be used (connection, TLS, protocol): then nothing was
// acknowledged, and the next mail server may be tried.
func (s *Sender) deliverSMTP(ctx context.Context, job smtpJob) ([]Reply, error) {
	addr := net.JoinHostPort(job.t.Host, strconv.Itoa(s.cfg.SMTPPort))
	dctx, cancel := context.WithTimeout(ctx, s.cfg.ConnectTimeout)
	nc, err := s.dial(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return nil, err
	}
	// The deadlines bound each step; ctx bounds the whole.
	stop := context.AfterFunc(ctx, func() { _ = nc.Close() })
	defer stop()
	defer func() { _ = nc.Close() }() // QUIT was sent or the session failed
	c := &smtpConn{nc: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriter(nc), timeout: s.cfg.CommandTimeout}

	code, _, err := c.cmd("")
	if err != nil {
		return nil, err
	}
	if code != 220 {
		return nil, fmt.Errorf("greeting %d", code)
	}
	ext, err := c.ehlo(s.cfg.Hostname)
	if err != nil {
		return nil, err
	}
	if _, ok := ext["STARTTLS"]; !ok {
		return nil, errNoSTARTTLS
	}
	if code, _, err = c.cmd("STARTTLS"); err != nil {
		return nil, err
	}
	if code != 220 {
		return nil, fmt.Errorf("STARTTLS refused with %d", code)
	}
	tc := tls.Client(nc, job.tls)
	_ = nc.SetDeadline(time.Now().Add(s.cfg.CommandTimeout)) // a failed deadline shows up in the handshake
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	c.nc, c.r, c.w = tc, bufio.NewReaderSize(tc, 4096), bufio.NewWriter(tc)
	if ext, err = c.ehlo(s.cfg.Hostname); err != nil {
		return nil, err
	}

	all := func(r Reply) []Reply {
		out := make([]Reply, len(job.rcpts))
		for i := range out {
			out[i] = r
		}
		return out
	}
	mail := "MAIL FROM:<" + job.from + ">"
	if needsUTF8(job.from, job.rcpts) {
		if _, ok := ext["SMTPUTF8"]; !ok {
			c.quit()
			return all(replyNoUTF8), nil
		}
		mail += " SMTPUTF8"
	}
	if _, ok := ext["8BITMIME"]; ok && job.eightBit {
		mail += " BODY=8BITMIME"
	}
	if _, ok := ext["SIZE"]; ok {
		mail += " SIZE=" + strconv.FormatInt(job.body.Size(), 10)
	}
	code, lines, err := c.cmd(mail)
	if err != nil {
		return nil, err
	}
	if code/100 != 2 {
		r, err := peerReply(lines)
		if err != nil {
			return nil, err
		}
		c.quit()
		return all(r), nil
	}
	out := make([]Reply, len(job.rcpts))
	var accepted []int
	for i, rc := range job.rcpts {
		code, lines, err := c.cmd("RCPT TO:<" + rc + ">")
		if err != nil {
			return nil, err
		}
		if out[i], err = peerReply(lines); err != nil {
			return nil, err
		}
		if code/100 == 2 {
			accepted = append(accepted, i)
		}
	}
	if len(accepted) == 0 {
		c.quit()
		return out, nil
	}
	setAccepted := func(r Reply) []Reply {
		for _, i := range accepted {
			out[i] = r
		}
		return out
	}
	code, lines, err = c.cmd("DATA")
	if err != nil {
		return nil, err
	}
	if code != 354 {
		// Only a refusal ends the transaction here: a 2xx to DATA
		// acknowledges nothing, the body has not been sent.
		r, err := peerReply(lines)
		if err != nil || r.OK() {
			return nil, errProtocol
		}
		c.quit()
		return setAccepted(r), nil
	}
	_ = c.nc.SetDeadline(time.Now().Add(s.cfg.DataTimeout)) // a failed deadline shows up as the I/O error below
	if _, err := io.Copy(c.w, job.body.Reader()); err != nil {
		return nil, err
	}
	if _, err := c.w.WriteString(".\r\n"); err != nil {
		return nil, err
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	// Only this reply acknowledges the message.
	_, lines, err = c.cmd("")
	if err != nil {
		return nil, err
	}
	r, err := peerReply(lines)
	if err != nil {
		return nil, err
	}
	c.quit()
	return setAccepted(r), nil
}

// quit ends the session politely; its answer changes nothing.
func (c *smtpConn) quit() {
	_, _, _ = c.cmd("QUIT")
}

// needsUTF8 reports whether any address is not ASCII (RFC 6531).
func needsUTF8(from string, rcpts []string) bool {
	ascii := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return false
			}
		}
		return true
	}
	if !ascii(from) {
		return true
	}
	for _, r := range rcpts {
		if !ascii(r) {
			return true
		}
	}
	return false
}
