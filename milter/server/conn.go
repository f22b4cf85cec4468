package server

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/emersion/go-milter"

	"chatmail.dev/sidecar/connserve"
	"chatmail.dev/sidecar/mailpolicy"
)

// readers hold what the MTA sends without waiting for an answer: the
// header fields, or a body chunk of up to 64 KiB in a few reads. They are
// reused: Postfix opens a connection per SMTP session.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// conn follows the milter packets going through it to know whether a
// message is in progress, since go-milter offers no hook for that: a MAIL
// command starts one (connserve's Busy), an abort or a final answer ends
// it. When the server shuts down, the session ends at the first read
// outside a message.
type conn struct {
	*connserve.Conn
	r *bufio.Reader // go-milter reads each packet in two reads

	mu      sync.Mutex
	lastCmd milter.Code
	in, out packetScanner
	closed  bool
	done    chan struct{}   // closed by Close
	txn     *mailpolicy.Txn // transaction in progress, ended by Close
}

func newConn(c *connserve.Conn) *conn {
	w := &conn{Conn: c, done: make(chan struct{})}
	w.r = readers.Get().(*bufio.Reader)
	w.r.Reset(c)
	return w
}

// setTxn records the transaction in progress on this connection.
func (c *conn) setTxn(t *mailpolicy.Txn) {
	c.mu.Lock()
	c.txn = t
	c.mu.Unlock()
}

func (c *conn) Read(p []byte) (int, error) {
	for {
		if c.Closing() && !c.IsBusy() {
			return 0, io.EOF
		}
		n, err := c.r.Read(p)
		c.mu.Lock()
		c.in.scan(p[:n], func(code byte) {
			c.lastCmd = milter.Code(code)
			switch milter.Code(code) {
			case milter.CodeMail:
				c.Busy(true)
			case milter.CodeAbort, milter.CodeQuit:
				c.Busy(false)
			}
		})
		c.mu.Unlock()
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && c.Closing() {
			if c.IsBusy() {
				// Woken while a message is in progress: keep serving it.
				if err := c.SetReadDeadline(time.Time{}); err != nil {
					return 0, err
				}
				continue
			}
			return 0, io.EOF
		}
		return n, err
	}
}

func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.out.scan(p[:n], func(code byte) {
		switch code {
		case byte(milter.ActContinue), byte(milter.CodeOptNeg),
			byte(milter.ActAddRcpt), byte(milter.ActDelRcpt), byte(milter.ActReplBody),
			byte(milter.ActAddHeader), byte(milter.ActChangeHeader), byte(milter.ActInsertHeader),
			byte(milter.ActQuarantine), byte(milter.ActChangeFrom):
			// continue, modifications and negotiation are not answers
		case byte(milter.ActReplyCode):
			if c.lastCmd != milter.CodeRcpt { // a refused recipient does not end the message
				c.Busy(false)
			}
		default:
			c.Busy(false)
		}
	})
	c.mu.Unlock()
	if c.Closing() && !c.IsBusy() {
		c.Wake() // the answer is out: end the session at its next read
	}
	return n, err
}

func (c *conn) Close() error {
	c.mu.Lock()
	first := !c.closed
	c.closed = true
	txn := c.txn
	c.txn = nil
	c.mu.Unlock()
	err := c.Conn.Close()
	if first {
		// go-milter closes from the goroutine that reads, after its
		// last read.
		c.r.Reset(nil)
		readers.Put(c.r)
		c.r = nil // a read after Close fails loudly, never reads another's bytes
		// go-milter closes the connection from the goroutine that runs
		// the callbacks, once it stops reading, so no callback uses txn
		// any more. Ending it stops the DKIM goroutines blocked on it.
		if txn != nil {
			txn.Close()
		}
		close(c.done)
	}
	return err
}

// oneConn is a listener that yields one connection, then blocks until
// that connection is closed.
type oneConn struct {
	c    *conn
	used bool
}

func (l *oneConn) Accept() (net.Conn, error) {
	if !l.used {
		l.used = true
		return l.c, nil
	}
	<-l.c.done
	return nil, net.ErrClosed
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.c.LocalAddr() }

// packetScanner finds the code byte of each milter packet (a 4-byte
// length, then the code, then the data) in a byte stream.
type packetScanner struct {
	hdr  [4]byte
	hn   int
	skip uint32 // data bytes left in the current packet
	code bool   // next byte is a code
}

func (s *packetScanner) scan(p []byte, fn func(code byte)) {
	for len(p) > 0 {
		switch {
		case s.code:
			fn(p[0])
			s.code = false
			p = p[1:]
		case s.skip > 0:
			n := uint32(len(p))
			if n > s.skip {
				n = s.skip
			}
			s.skip -= n
			p = p[n:]
		default:
			s.hdr[s.hn] = p[0]
			s.hn++
			p = p[1:]
			if s.hn == 4 {
				s.hn = 0
				l := uint32(s.hdr[0])<<24 | uint32(s.hdr[1])<<16 | uint32(s.hdr[2])<<8 | uint32(s.hdr[3])
				if l > 0 {
					s.code, s.skip = true, l-1
				}
			}
		}
	}
}
