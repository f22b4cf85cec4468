// Package deltachat drives the Delta Chat core through its JSON-RPC server,
// deltachat-rpc-server, so that integration tests can run real Delta Chat
// clients against our mail server.
//
// The server speaks JSON-RPC 2.0 with one JSON object per line on its stdin
// and stdout, and positional parameters. Events are pulled with the
// long-poll method get_next_event; [Start] keeps one such call in flight and
// files every event under its account, see [Account.WaitFor].
package deltachat

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// BinaryEnv names the environment variable that overrides where
// deltachat-rpc-server is found.
const BinaryEnv = "DELTACHAT_RPC_SERVER"

// binaryRelPath is where `npm install --prefix .deltachat` puts the binary,
// relative to the repository root.
var binaryRelPath = filepath.Join(".deltachat", "node_modules", "@deltachat",
	"stdio-rpc-server-linux-x64", "deltachat-rpc-server")

// InstallHint tells a human how to get the binary that [FindBinary] looks for.
const InstallHint = "install it from the repository root with " +
	"`npm install --no-save --prefix .deltachat @deltachat/stdio-rpc-server-linux-x64@2.62.0`, " +
	"or point " + BinaryEnv + " at a deltachat-rpc-server binary"

// closeTimeout is how long Close lets the server shut down by itself
// before killing it.
const closeTimeout = 10 * time.Second

// ErrClosed is returned by calls made after the server has stopped.
var ErrClosed = errors.New("deltachat: rpc server closed")

// FindBinary returns the path of deltachat-rpc-server: the value of
// $DELTACHAT_RPC_SERVER if set, otherwise the npm install location in the
// nearest directory above the working directory that has one.
func FindBinary() (string, error) {
	if path := os.Getenv(BinaryEnv); path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("deltachat: %s: %w; %s", BinaryEnv, err, InstallHint)
		}
		return path, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("deltachat: %w", err)
	}
	for {
		path := filepath.Join(dir, binaryRelPath)
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("deltachat: deltachat-rpc-server not found in %s above the working directory; %s", binaryRelPath, InstallHint)
		}
		dir = parent
	}
}

// Options configures [Start].
type Options struct {
	// Binary is the path of deltachat-rpc-server. If empty, FindBinary is used.
	Binary string
	// AccountsDir is where the server keeps its accounts (DC_ACCOUNTS_PATH).
	// It is required so that tests never touch a shared default location.
	AccountsDir string
	// Log, if not nil, receives the server's stderr and its Warning and
	// Error events. Writes are serialized.
	Log io.Writer
	// Verbose also sends Info events to Log. Core logs every IMAP and SMTP
	// step as an Info event, which helps when a test hangs.
	Verbose bool
}

// RPCError is an error object returned by the server.
type RPCError struct {
	Code    int             `json:"code"`
	Message string          `json:"message"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("%s (code %d)", e.Message, e.Code)
}

type request struct {
	JSONRPC string `json:"jsonrpc"`
	ID      uint64 `json:"id"`
	Method  string `json:"method"`
	Params  []any  `json:"params"`
}

type response struct {
	ID     *uint64         `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *RPCError       `json:"error"`
}

// RPC is a running deltachat-rpc-server. Its methods are safe for
// concurrent use.
type RPC struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   io.Writer // nil if logging is off
	opts  Options

	writeMu sync.Mutex // serializes request lines on stdin

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan response
	queues  map[uint32]*eventQueue
	err     error // why the connection ended; set before done is closed

	closing bool // Close was called, so the exit is no surprise

	done      chan struct{} // closed when the reader has stopped
	exited    chan struct{} // closed when the process has been reaped
	waitErr   error         // valid after exited is closed
	pumpDone  chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// Start runs deltachat-rpc-server and starts pumping its events. The server
// runs until Close; ctx only bounds the startup check.
func Start(ctx context.Context, opts Options) (*RPC, error) {
	if opts.AccountsDir == "" {
		return nil, errors.New("deltachat: Options.AccountsDir is required")
	}
	if opts.Binary == "" {
		path, err := FindBinary()
		if err != nil {
			return nil, err
		}
		opts.Binary = path
	}

	r := &RPC{
		opts:     opts,
		pending:  make(map[uint64]chan response),
		queues:   make(map[uint32]*eventQueue),
		done:     make(chan struct{}),
		exited:   make(chan struct{}),
		pumpDone: make(chan struct{}),
	}
	if opts.Log != nil {
		r.log = &lockedWriter{w: opts.Log}
	}

	cmd := exec.Command(opts.Binary)
	cmd.Env = append(os.Environ(), "DC_ACCOUNTS_PATH="+opts.AccountsDir)
	cmd.Stderr = r.log
	// Bound the wait for the stderr copier in case the pipe outlives
	// the process.
	cmd.WaitDelay = time.Second
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("deltachat: %w", err)
	}
	// Use our own pipe for stdout: with cmd.StdoutPipe, Wait would close it
	// under the reader and drop the last responses.
	stdoutR, stdoutW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("deltachat: %w", err)
	}
	cmd.Stdout = stdoutW
	if err := cmd.Start(); err != nil {
		stdoutR.Close()
		stdoutW.Close()
		return nil, fmt.Errorf("deltachat: starting %s: %w", opts.Binary, err)
	}
	stdoutW.Close() // the child holds its own copy; we must not keep EOF away
	r.cmd = cmd
	r.stdin = stdin

	go func() {
		r.waitErr = cmd.Wait()
		close(r.exited)
	}()
	go r.readLoop(stdoutR)
	go r.pumpEvents()

	// Fail early, with the server's reason, if the binary is not a working
	// rpc server.
	if err := r.Call(ctx, "get_system_info", nil, nil); err != nil {
		r.Close()
		return nil, fmt.Errorf("deltachat: %s does not answer: %w", opts.Binary, err)
	}
	return r, nil
}

// Call invokes method with positional params and decodes the result into
// result, which may be nil to discard it. Errors returned by the server
// are *RPCError (use errors.As).
//
// Cancelling ctx abandons the wait for the answer; the server still
// finishes the call.
func (r *RPC) Call(ctx context.Context, method string, params []any, result any) error {
	if params == nil {
		params = []any{} // the server rejects a missing params array
	}
	ch := make(chan response, 1)
	r.mu.Lock()
	if r.err != nil {
		err := r.err
		r.mu.Unlock()
		return fmt.Errorf("%s: %w", method, err)
	}
	r.nextID++
	id := r.nextID
	r.pending[id] = ch
	r.mu.Unlock()

	line, err := json.Marshal(request{JSONRPC: "2.0", ID: id, Method: method, Params: params})
	if err != nil {
		r.forget(id)
		return fmt.Errorf("%s: encoding params: %w", method, err)
	}
	line = append(line, '\n')
	r.writeMu.Lock()
	_, err = r.stdin.Write(line)
	r.writeMu.Unlock()
	if err != nil {
		r.forget(id)
		return fmt.Errorf("%s: %w: %v", method, ErrClosed, err)
	}

	select {
	case resp := <-ch:
		return decodeResponse(method, resp, result)
	case <-r.done:
		// The reader hands out answers before it closes done, so an
		// answer that made it is waiting in ch.
		select {
		case resp := <-ch:
			return decodeResponse(method, resp, result)
		default:
			return fmt.Errorf("%s: %w", method, r.connErr())
		}
	case <-ctx.Done():
		r.forget(id)
		return fmt.Errorf("%s: %w", method, ctx.Err())
	}
}

func decodeResponse(method string, resp response, result any) error {
	if resp.Error != nil {
		return fmt.Errorf("%s: %w", method, resp.Error)
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Result, result); err != nil {
		return fmt.Errorf("%s: decoding result: %w", method, err)
	}
	return nil
}

func (r *RPC) forget(id uint64) {
	r.mu.Lock()
	delete(r.pending, id)
	r.mu.Unlock()
}

func (r *RPC) connErr() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// readLoop delivers answers to callers until stdout ends.
func (r *RPC) readLoop(stdout *os.File) {
	defer stdout.Close()
	dec := json.NewDecoder(stdout)
	var err error
	for {
		var resp response
		if err = dec.Decode(&resp); err != nil {
			break
		}
		if resp.ID == nil {
			r.logf("deltachat: ignoring message without id: %+v", resp)
			continue
		}
		r.mu.Lock()
		ch := r.pending[*resp.ID]
		delete(r.pending, *resp.ID)
		r.mu.Unlock()
		if ch != nil {
			ch <- resp // buffered, never blocks
		}
	}

	// Report why the server went away: prefer its exit status over the
	// bare EOF, unless we asked it to stop.
	reason := ErrClosed
	if !errors.Is(err, io.EOF) {
		reason = fmt.Errorf("%w: reading stdout: %v", ErrClosed, err)
	} else {
		select {
		case <-r.exited:
			if r.waitErr != nil {
				reason = fmt.Errorf("%w: %v", ErrClosed, r.waitErr)
			}
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.mu.Lock()
	if r.closing {
		reason = ErrClosed
	}
	r.err = reason
	r.pending = nil
	r.mu.Unlock()
	close(r.done)
}

// Close stops the server: it closes stdin, which makes the server exit,
// and kills it if it is still running after a timeout. It waits for all
// goroutines of r to end. Close is idempotent.
func (r *RPC) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closing = true
		r.mu.Unlock()
		r.stdin.Close()
		select {
		case <-r.exited:
		case <-time.After(closeTimeout):
			r.cmd.Process.Kill()
			<-r.exited
			r.closeErr = fmt.Errorf("deltachat: server did not exit within %v of closing stdin; killed", closeTimeout)
		}
		<-r.done
		<-r.pumpDone
		if r.closeErr == nil && r.waitErr != nil {
			r.closeErr = fmt.Errorf("deltachat: server: %w", r.waitErr)
		}
	})
	return r.closeErr
}

func (r *RPC) logf(format string, args ...any) {
	if r.log != nil {
		fmt.Fprintf(r.log, format+"\n", args...)
	}
}

// lockedWriter serializes writes from the stderr copier and the event pump.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (lw *lockedWriter) Write(p []byte) (int, error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	return lw.w.Write(p)
}
