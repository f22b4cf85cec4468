package dict

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"chatmail.dev/sidecar/connserve"
)

// MaxLineLength is the longest command line accepted, as in Dovecot's client.
const MaxLineLength = 64 * 1024

// Bounds on what one connection may hold open: Dovecot uses a transaction or
// two with a few changes each; more is a misbehaving peer.
const (
	maxTransactions = 16
	maxOps          = 1000
)

// writeTimeout bounds writing one reply, a whole iteration included.
const writeTimeout = time.Minute

// Handler answers dict requests. Errors returned from its methods are sent to
// Dovecot as failures ("F"), which Dovecot treats as temporary: a handler must
// return an error, never "not found", when it cannot know the answer.
type Handler interface {
	// Lookup returns the value of key for user, or found=false.
	Lookup(ctx context.Context, req Lookup) (value string, found bool, err error)
	// Iterate calls emit for every key under req.Path.
	Iterate(ctx context.Context, req Iterate, emit func(key, value string) error) error
	// Commit applies a transaction atomically.
	Commit(ctx context.Context, tx *Tx) error
}

// Hello is what Dovecot says first on a connection. Major is 4 from
// Dovecot 2.4 on, 3 from 2.3 (2 from older clients); a connection that
// sends commands without a hello is served as 3.x with Major 0.
type Hello struct {
	Major, Minor int
	User         string
	// DictName is the name after the socket path in 2.3's
	// proxy:<path>:<name>, or 2.4's dict_proxy_name.
	DictName string
}

// Lookup is an L command.
type Lookup struct {
	Hello *Hello
	Key   string
	User  string
}

// Iterate is an I command.
type Iterate struct {
	Hello   *Hello
	Flags   uint
	MaxRows uint64
	Path    string
	User    string
}

// Iterate flags from Dovecot's dict.h, the same in 2.3 and 2.4 (doveadm
// dict iter -1 sends 16, -RV sends 9; testdata/v3 and v4).
const (
	IterRecurse     = 0x01
	IterSortByKey   = 0x02
	IterSortByValue = 0x04
	IterNoValue     = 0x08
	IterExactKey    = 0x10
	IterAsync       = 0x20
)

// OpKind says what a transaction operation does.
type OpKind byte

// Transaction operations.
const (
	OpSet       OpKind = 'S'
	OpUnset     OpKind = 'U'
	OpAtomicInc OpKind = 'A'
)

// Op is one change inside a transaction.
type Op struct {
	Kind  OpKind
	Key   string
	Value string // OpSet
	Diff  int64  // OpAtomicInc
}

// Tx is a transaction between B and C.
type Tx struct {
	Hello *Hello
	ID    uint64
	User  string
	Ops   []Op
	// ExpireSecs is how long the values set should live, from protocol
	// 4.0's BEGIN (doveadm dict set -e); 0 means forever, and is what
	// quota_clone, last_login and METADATA send.
	ExpireSecs uint32
	// HideLogValues asks that the values stay out of logs (V, Dovecot
	// 2.3.21 and 2.4).
	HideLogValues bool
}

// ErrNotFound may be returned by Commit when a key to change does not exist;
// Dovecot then gets "N" rather than a failure.
var ErrNotFound = errors.New("dict: not found")

// Server serves the dict protocol to Dovecot.
type Server struct {
	Handler Handler
	Log     *slog.Logger
	// IdleTimeout closes a connection that sends nothing for this long.
	IdleTimeout time.Duration
	// RequestTimeout bounds one handler call.
	RequestTimeout time.Duration
	// Panics, if set, counts the panics recovered in the handler; the
	// connection ends, the server goes on.
	Panics connserve.Counter

	conns connserve.Server
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = connserve.ErrServerClosed

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.conns.Log, s.conns.Panics = s.Log, s.Panics
	return s.conns.Serve(ln, s.serveConn)
}

// Shutdown stops accepting, lets every connection finish the command it is
// working on, closes them, and waits for that or for ctx.
func (s *Server) Shutdown(ctx context.Context) error { return s.conns.Shutdown(ctx) }

type conn struct {
	srv      *Server
	greeting Hello // from H
	txs      map[uint64]*Tx
}

func (s *Server) serveConn(nc *connserve.Conn) {
	c := &conn{srv: s}
	r := readerPool.Get().(*bufio.Reader)
	w := writerPool.Get().(*bufio.Writer)
	r.Reset(nc)
	w.Reset(nc)
	defer func() {
		r.Reset(nil)
		w.Reset(nil)
		readerPool.Put(r)
		writerPool.Put(w)
	}()
	var long []byte
	for {
		if r.Buffered() == 0 && !nc.AwaitRequest(s.IdleTimeout) {
			return
		}
		line, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long[:0], line...)
			for errors.Is(err, bufio.ErrBufferFull) && len(long) <= MaxLineLength {
				line, err = r.ReadSlice('\n')
				long = append(long, line...)
			}
			if len(long) > MaxLineLength {
				s.Log.Warn("dict: line too long, closing connection", "length", len(long))
				return
			}
			line = long
		}
		if err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !(errors.As(err, &ne) && ne.Timeout()) {
				s.Log.Debug("dict: read failed", "err", err)
			}
			return
		}
		nc.Busy(true)
		// A peer that stops reading must not hold the connection forever.
		nc.SetWriteDeadline(time.Now().Add(writeTimeout))
		perr := c.handle(string(line[:len(line)-1]), w)
		if perr == nil && r.Buffered() == 0 {
			perr = w.Flush()
		}
		nc.Busy(false)
		if perr != nil {
			if !errors.Is(perr, errClose) {
				s.Log.Warn("dict: closing connection", "err", perr)
			}
			w.Flush()
			return
		}
	}
}

var errClose = errors.New("close")

// handle executes one command line and writes its reply, if it has one. An
// error closes the connection: the protocol has no way to report a malformed
// command, and Dovecot reconnects.
func (c *conn) handle(line string, w *bufio.Writer) error {
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if line == "" {
		return errClose // chatmail's clients end a session with an empty line
	}
	cmd, args := line[0], line[1:]
	f, err := splitFields(args)
	if err != nil {
		return fmt.Errorf("%c: %w", cmd, err)
	}
	switch cmd {
	case 'H':
		return c.hello(f)
	case 'L':
		return c.lookup(f, w)
	case 'I':
		return c.iterate(f, w)
	case 'B':
		return c.begin(f)
	case 'S', 'U', 'A', 'T', 'V':
		return c.change(cmd, f)
	case 'R':
		return c.rollback(f)
	case 'C':
		return c.commit(false, f, w)
	case 'D':
		// Protocol 4.0 dropped the asynchronous commit.
		if c.greeting.Major < 4 {
			return c.commit(true, f, w)
		}
	}
	return fmt.Errorf("unknown command %q", cmd)
}

// hello (H) starts the session: protocol version, user, dict name. It has
// no reply. The major version chooses the protocol: 4 (Dovecot 2.4), or 3
// and 2 (2.3 and older), served alike.
func (c *conn) hello(f []string) error {
	if len(f) < 5 {
		return fmt.Errorf("hello with %d fields, want 5", len(f))
	}
	major, err1 := strconv.Atoi(f[0])
	minor, err2 := strconv.Atoi(f[1])
	if err1 != nil || err2 != nil || major < 2 || major > 4 {
		return fmt.Errorf("unsupported dict protocol version %.20q.%.20q", f[0], f[1])
	}
	c.greeting = Hello{Major: major, Minor: minor, User: f[3], DictName: f[4]}
	return nil
}

// lookup (L) answers one key: O<value>, N or F<error>.
func (c *conn) lookup(f []string, w *bufio.Writer) error {
	req := Lookup{Hello: &c.greeting, Key: f[0], User: c.greeting.User}
	if len(f) > 1 {
		req.User = f[1]
	}
	ctx, cancel := c.ctx()
	v, found, err := c.srv.Handler.Lookup(ctx, req)
	cancel()
	switch {
	case err != nil:
		w.WriteString("F")
		w.WriteString(Escape(err.Error()))
	case found:
		w.WriteString("O")
		w.WriteString(Escape(v))
	default:
		w.WriteString("N")
	}
	return w.WriteByte('\n')
}

// iterate (I) streams O<key>\t<value> rows, then an empty line (after
// F<error> if the iteration failed).
func (c *conn) iterate(f []string, w *bufio.Writer) error {
	if len(f) < 3 {
		return fmt.Errorf("iterate with %d fields, want at least 3", len(f))
	}
	flags, err1 := strconv.ParseUint(f[0], 10, 32)
	maxRows, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return errors.New("iterate with non-numeric flags or row limit")
	}
	req := Iterate{Hello: &c.greeting, Flags: uint(flags), MaxRows: maxRows, Path: f[2], User: c.greeting.User}
	if len(f) > 3 {
		req.User = f[3]
	}
	// An iteration streams every row: bounded by the write deadline,
	// not by the per-request timeout meant for lookups.
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	var rows uint64
	err := c.srv.Handler.Iterate(ctx, req, func(k, v string) error {
		if req.MaxRows > 0 && rows >= req.MaxRows {
			return errStopIteration
		}
		rows++
		w.WriteString("O")
		w.WriteString(Escape(k))
		w.WriteByte('\t')
		if req.Flags&IterNoValue == 0 {
			w.WriteString(Escape(v))
		}
		return w.WriteByte('\n')
	})
	if err != nil && !errors.Is(err, errStopIteration) {
		w.WriteString("F")
		w.WriteString(Escape(err.Error()))
	}
	return w.WriteByte('\n')
}

// begin (B) opens a transaction: B<id>\t<user>, and in protocol 4.0 a
// third field, the values' lifetime in seconds. It has no reply.
func (c *conn) begin(f []string) error {
	id, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return errors.New("non-numeric transaction id")
	}
	if c.txs == nil {
		c.txs = map[uint64]*Tx{}
	}
	if len(c.txs) >= maxTransactions {
		return fmt.Errorf("more than %d open transactions", maxTransactions)
	}
	if _, dup := c.txs[id]; dup {
		return fmt.Errorf("transaction %d begun twice", id)
	}
	tx := &Tx{Hello: &c.greeting, ID: id, User: c.greeting.User}
	if len(f) > 1 {
		tx.User = f[1]
	}
	if len(f) > 2 && c.greeting.Major >= 4 {
		secs, err := strconv.ParseUint(f[2], 10, 32)
		if err != nil {
			return errors.New("non-numeric expire_secs")
		}
		tx.ExpireSecs = uint32(secs)
	}
	c.txs[id] = tx
	return nil
}

// change (S set, U unset, A atomic increment, T timestamp, V hide log
// values) adds an operation to a transaction. It has no reply.
func (c *conn) change(cmd byte, f []string) error {
	tx, err := c.tx(f[0])
	if err != nil {
		return err
	}
	if len(tx.Ops) >= maxOps {
		return fmt.Errorf("more than %d changes in one transaction", maxOps)
	}
	switch {
	case cmd == 'S' && len(f) == 3:
		tx.Ops = append(tx.Ops, Op{Kind: OpSet, Key: f[1], Value: f[2]})
	case cmd == 'U' && len(f) == 2:
		tx.Ops = append(tx.Ops, Op{Kind: OpUnset, Key: f[1]})
	case cmd == 'A' && len(f) == 3:
		d, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			return errors.New("atomic increment by a non-number")
		}
		tx.Ops = append(tx.Ops, Op{Kind: OpAtomicInc, Key: f[1], Diff: d})
	case cmd == 'T':
		// Timestamps only matter to backends that version values.
	case cmd == 'V' && len(f) == 2:
		// As Dovecot's str_parse_get_bool.
		switch v := f[1]; {
		case strings.EqualFold(v, "yes") || strings.EqualFold(v, "y") || v == "1":
			tx.HideLogValues = true
		case strings.EqualFold(v, "no"):
			tx.HideLogValues = false
		default:
			return errors.New("hide_log_values neither yes nor no")
		}
	default:
		return fmt.Errorf("%c command with %d fields", cmd, len(f))
	}
	return nil
}

// rollback (R) drops a transaction. It has no reply.
func (c *conn) rollback(f []string) error {
	tx, err := c.tx(f[0])
	if err != nil {
		return err
	}
	delete(c.txs, tx.ID)
	return nil
}

// commit (C, or D for the asynchronous commit whose reply starts with A)
// applies a transaction: O<id>, N<id> or F<id>\t<error>.
func (c *conn) commit(async bool, f []string, w *bufio.Writer) error {
	tx, err := c.tx(f[0])
	if err != nil {
		return err
	}
	delete(c.txs, tx.ID)
	ctx, cancel := c.ctx()
	err = c.srv.Handler.Commit(ctx, tx)
	cancel()
	if async {
		w.WriteByte('A')
	}
	switch {
	case err == nil:
		fmt.Fprintf(w, "O%d", tx.ID)
	case errors.Is(err, ErrNotFound):
		fmt.Fprintf(w, "N%d", tx.ID)
	default:
		fmt.Fprintf(w, "F%d\t%s", tx.ID, Escape(err.Error()))
	}
	return w.WriteByte('\n')
}

var errStopIteration = errors.New("enough rows")

func (c *conn) tx(idField string) (*Tx, error) {
	id, err := strconv.ParseUint(idField, 10, 32)
	if err != nil {
		return nil, errors.New("non-numeric transaction id")
	}
	tx := c.txs[id]
	if tx == nil {
		return nil, fmt.Errorf("unknown transaction %d", id)
	}
	return tx, nil
}

func (c *conn) ctx() (context.Context, context.CancelFunc) {
	if c.srv.RequestTimeout > 0 {
		return context.WithTimeout(context.Background(), c.srv.RequestTimeout)
	}
	return context.WithCancel(context.Background())
}
