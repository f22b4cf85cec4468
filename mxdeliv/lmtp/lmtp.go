// Package lmtp is a small LMTP client (RFC 2033) for handing a message to
// Dovecot: LHLO, MAIL, RCPT for each recipient, DATA with one reply per
// accepted recipient, RSET, QUIT. Every command and every write of the
// message has a deadline; replies are read in bounded memory.
//
// It speaks only what Dovecot's LMTP server needs: no pipelining, no
// BDAT, no extensions in MAIL or RCPT. Addresses are written as given;
// the caller passes only addresses it has checked (no '<', '>', space or
// control characters).
package lmtp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// Limits of a reply: longer lines or more lines are a protocol error.
const (
	maxLine  = 2048
	maxLines = 64
)

// Reply is one LMTP reply: its code and its text, continuation lines
// joined by "\n" (without the code prefixes).
type Reply struct {
	Code int
	Text string
}

// Error implements error, so that a refusal can be returned as one.
func (r *Reply) Error() string { return r.String() }

// String is the reply as an SMTP reply line.
func (r *Reply) String() string {
	return strconv.Itoa(r.Code) + " " + strings.ReplaceAll(r.Text, "\n", " ")
}

// OK reports a 2xx reply.
func (r *Reply) OK() bool { return r.Code/100 == 2 }

// Temporary reports a 4xx reply.
func (r *Reply) Temporary() bool { return r.Code/100 == 4 }

// ErrProtocol wraps replies the client cannot read.
var ErrProtocol = errors.New("lmtp: protocol error")

// Client is one LMTP connection. It is not safe for concurrent use.
type Client struct {
	conn    net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	timeout time.Duration
	stop    func() bool
}

// Dial connects to the LMTP server at network/addr ("unix", a socket path),
// reads its greeting and says LHLO. timeout bounds each command and each
// write of the message; ctx, when it ends, closes the connection.
func Dial(ctx context.Context, network, addr, lhlo string, timeout time.Duration) (*Client, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c := &Client{conn: conn, br: bufio.NewReaderSize(conn, 4096), bw: bufio.NewWriterSize(conn, 32<<10), timeout: timeout}
	c.stop = context.AfterFunc(ctx, func() { _ = conn.Close() }) // unblocks a read or write
	r, err := c.read()
	if err == nil && r.Code != 220 {
		err = r
	}
	if err == nil {
		r, err = c.cmd("LHLO " + lhlo)
		if err == nil && !r.OK() {
			err = r
		}
	}
	if err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the connection without QUIT.
func (c *Client) Close() error {
	c.stop()
	return c.conn.Close()
}

// Quit says QUIT and closes the connection.
func (c *Client) Quit() error {
	_, err := c.cmd("QUIT")
	if cerr := c.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

// Mail starts a transaction; from "" is the null sender. A refusal is a
// *Reply error.
func (c *Client) Mail(from string) error { return c.expect2xx("MAIL FROM:<" + from + ">") }

// Rcpt adds a recipient. A refusal is a *Reply error.
func (c *Client) Rcpt(to string) error { return c.expect2xx("RCPT TO:<" + to + ">") }

// Reset aborts the transaction (RSET).
func (c *Client) Reset() error { return c.expect2xx("RSET") }

func (c *Client) expect2xx(line string) error {
	r, err := c.cmd(line)
	if err != nil {
		return err
	}
	if !r.OK() {
		return r
	}
	return nil
}

// Data sends the message and returns one reply for each of the n
// recipients accepted, in their order. msg must have CRLF line ends; Data
// dot-stuffs it, ends its last line if it lacks CRLF, and writes the
// final dot. An error means the outcome of some recipients is unknown.
func (c *Client) Data(msg io.Reader, n int) ([]*Reply, error) {
	r, err := c.cmd("DATA")
	if err != nil {
		return nil, err
	}
	if r.Code != 354 {
		return nil, r
	}
	dw := &dotWriter{w: c, atLineStart: true}
	if _, err := io.Copy(dw, msg); err != nil {
		return nil, err
	}
	if err := dw.close(); err != nil {
		return nil, err
	}
	if err := c.flush(); err != nil {
		return nil, err
	}
	out := make([]*Reply, 0, n)
	for range n {
		r, err := c.read()
		if err != nil {
			return out, err
		}
		out = append(out, r)
	}
	return out, nil
}

// Write writes to the connection with a fresh deadline, so that a
// message goes through as long as Dovecot keeps reading.
func (c *Client) Write(p []byte) (int, error) {
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	return c.bw.Write(p)
}

func (c *Client) flush() error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return err
	}
	return c.bw.Flush()
}

func (c *Client) cmd(line string) (*Reply, error) {
	if _, err := c.Write([]byte(line + "\r\n")); err != nil {
		return nil, err
	}
	if err := c.flush(); err != nil {
		return nil, err
	}
	return c.read()
}

// read reads one reply, multi-line ones included.
func (c *Client) read() (*Reply, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return nil, err
	}
	var r Reply
	var text []string
	for i := 0; ; i++ {
		if i == maxLines {
			return nil, fmt.Errorf("%w: reply of more than %d lines", ErrProtocol, maxLines)
		}
		line, err := c.br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxLine {
			return nil, fmt.Errorf("%w: reply line too long", ErrProtocol)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		l := strings.TrimRight(string(line), "\r\n")
		if len(l) < 3 || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return nil, fmt.Errorf("%w: malformed reply line", ErrProtocol)
		}
		code, err := strconv.Atoi(l[:3])
		if err != nil || code < 200 || code > 599 {
			return nil, fmt.Errorf("%w: malformed reply code", ErrProtocol)
		}
		if i > 0 && code != r.Code {
			return nil, fmt.Errorf("%w: reply code changed within a reply", ErrProtocol)
		}
		r.Code = code
		if len(l) > 4 {
			text = append(text, l[4:])
		} else {
			text = append(text, "")
		}
		if len(l) == 3 || l[3] == ' ' {
			break
		}
	}
	r.Text = strings.Join(text, "\n")
	return &r, nil
}

// dotWriter dot-stuffs a CRLF message (RFC 5321 4.5.2) and, at close,
// ends its last line and writes the end-of-data line.
type dotWriter struct {
	w           io.Writer
	atLineStart bool
	lastCR      bool
}

func (d *dotWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if d.atLineStart && p[0] == '.' {
			if _, err := d.w.Write([]byte{'.'}); err != nil {
				return n, err
			}
		}
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i+1]
		}
		if _, err := d.w.Write(chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		d.atLineStart = i >= 0
		d.lastCR = chunk[len(chunk)-1] == '\r'
		p = p[len(chunk):]
	}
	return n, nil
}

func (d *dotWriter) close() error {
	end := ".\r\n"
	switch {
	case d.atLineStart:
	case d.lastCR:
		end = "\n" + end
	default:
		end = "\r\n" + end
	}
	_, err := d.w.Write([]byte(end))
	return err
}
