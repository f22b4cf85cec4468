// Package server is chatmail-logd's [logd] section and its Run for
// daemon.Main: bind the Postfix and Dovecot log sockets, read them into the
// bounded queue, write through the No-Log rules to the output file.
package server

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"chatmail.dev/logd/masking"
	"chatmail.dev/logd/sink"
	"chatmail.dev/sidecar/config"
	"chatmail.dev/sidecar/daemon"
)

// DrainTimeout is the time from SIGTERM to exit: the queue is written out.
const DrainTimeout = 5 * time.Second

// Config is the [logd] section. Under systemd the two sockets are
// chatmail-logd.socket's, passed to logd and matched to these paths by the
// address they are bound to; logd binds a configured socket itself only when
// none was passed, and removes at exit only what it bound.
//
//	[logd]
//	postfix_socket = "/var/spool/postfix/public/chatmail-log" # postlog_service_name = chatmail-log
//	dovecot_socket = "/run/chatmail-log/dev-log"             # bound over /dev/log in Dovecot's namespace
//	output = "/var/log/chatmail/mail.log"
//	max_size = 104857600   # bytes; rotate to output.1 .. output.<keep>; 0: only reopen on SIGHUP
//	keep = 5
//	queue_length = 65536   # datagrams; beyond, lines are dropped and counted
//	queue_bytes = 16777216 # bytes of the queued datagrams; beyond, the same
//	receive_buffer = 4194304 # SO_RCVBUF of each socket logd binds, bytes
//	metrics = "127.0.0.1:9727"
type Config struct {
	PostfixSocket string `toml:"postfix_socket"`
	DovecotSocket string `toml:"dovecot_socket"`
	Output        string `toml:"output"`
	MaxSize       int64  `toml:"max_size"`
	Keep          int    `toml:"keep"`
	QueueLength   int    `toml:"queue_length"`
	QueueBytes    int64  `toml:"queue_bytes"`
	ReceiveBuffer int    `toml:"receive_buffer"`
	Metrics       string `toml:"metrics"`
}

// Defaults returns the section before the file is applied.
func Defaults() Config {
	return Config{
		PostfixSocket: "/var/spool/postfix/public/chatmail-log",
		DovecotSocket: "/run/chatmail-log/dev-log",
		Output:        "/var/log/chatmail/mail.log",
		MaxSize:       100 << 20,
		Keep:          5,
		QueueLength:   65536,
		// 65536 long lines would take up to 1 GiB; 16 MiB is still
		// thousands of typical lines (about 150 bytes), and keeps logd
		// well under the unit's MemoryMax.
		QueueBytes:    16 << 20,
		ReceiveBuffer: 4 << 20,
		Metrics:       "127.0.0.1:9727",
	}
}

// Validate implements config.Validator.
func (c *Config) Validate() error {
	if c.PostfixSocket == "" && c.DovecotSocket == "" {
		return &config.Error{Key: "postfix_socket", Msg: "set postfix_socket, dovecot_socket or both"}
	}
	for k, p := range map[string]string{"postfix_socket": c.PostfixSocket, "dovecot_socket": c.DovecotSocket, "output": c.Output} {
		if p != "" && !filepath.IsAbs(p) {
			return &config.Error{Key: k, Msg: fmt.Sprintf("%q is not an absolute path", p)}
		}
	}
	if c.PostfixSocket != "" && filepath.Clean(c.PostfixSocket) == filepath.Clean(c.DovecotSocket) {
		return &config.Error{Key: "dovecot_socket", Msg: "must differ from postfix_socket"}
	}
	if c.Output == "" {
		return &config.Error{Key: "output", Msg: "must be set"}
	}
	if c.QueueLength < 1 {
		return &config.Error{Key: "queue_length", Msg: "must be at least 1"}
	}
	if c.QueueBytes < sink.MaxDatagram {
		return &config.Error{Key: "queue_bytes", Msg: fmt.Sprintf("must be at least %d (one datagram)", sink.MaxDatagram)}
	}
	if c.MaxSize < 0 || c.Keep < 0 || c.ReceiveBuffer < 0 {
		return &config.Error{Key: "max_size", Msg: "max_size, keep and receive_buffer cannot be negative"}
	}
	return config.CheckLoopback("metrics", c.Metrics)
}

// MetricsAddr implements daemon.Section.
func (c *Config) MetricsAddr() string { return c.Metrics }

// Run takes the sockets systemd passed (chatmail-logd.socket) or binds
// them, and serves until ctx ends; SIGHUP reopens the output.
func Run(ctx context.Context, env *daemon.Env, c *Config) error {
	inherited, err := sink.ListenFDs()
	if err != nil {
		return fmt.Errorf("socket activation: %w", err)
	}
	return run(ctx, env, c, inherited)
}

func run(ctx context.Context, env *daemon.Env, c *Config, inherited []*os.File) error {
	sources := []struct {
		path string
		src  masking.Source
	}{{c.PostfixSocket, masking.Postfix}, {c.DovecotSocket, masking.Dovecot}}
	adopted, err := sink.Adopt(inherited, []string{sources[0].path, sources[1].path})
	if err != nil {
		return fmt.Errorf("socket activation: %w", err)
	}
	var conns []*net.UnixConn
	closeAll := func() {
		for _, conn := range conns {
			_ = conn.Close() // a datagram socket has nothing to flush
		}
	}
	defer closeAll()
	for _, conn := range adopted {
		if conn != nil {
			conns = append(conns, conn)
		}
	}

	m := sink.NewMetrics(env.Registry)
	q := sink.NewQueue(c.QueueLength, c.QueueBytes, m, env.NoLog)
	out, err := sink.OpenFile(c.Output, c.MaxSize, c.Keep)
	if err != nil {
		return err
	}
	defer out.Close()

	var readers sync.WaitGroup
	errc := make(chan error, len(sources))
	for i, s := range sources {
		if s.path == "" {
			continue
		}
		conn := adopted[i]
		if conn == nil {
			conn, err = sink.Listen(s.path, 0o666, c.ReceiveBuffer)
			if err != nil {
				return fmt.Errorf("%s socket: %w", s.src, err)
			}
			conns = append(conns, conn)
			// Only what logd bound: a passed socket is systemd's, and its
			// inode must outlive logd.
			defer os.Remove(s.path)
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			if err := sink.ReadLoop(conn, s.src, q); err != nil {
				errc <- fmt.Errorf("%s socket: %w", s.src, err)
			}
		}()
	}

	wctx, stopWriter := context.WithCancel(context.Background())
	written := make(chan struct{})
	go func() {
		sink.WriteLoop(wctx, q, out)
		close(written)
	}()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := daemon.Notify("READY=1"); err != nil {
		env.Log.Warn("cannot tell systemd the daemon is ready", "err", err)
	}
	env.Log.Info("serving", "postfix_socket", c.PostfixSocket, "dovecot_socket", c.DovecotSocket,
		"passed_by_systemd", len(inherited), "output", c.Output)
	var failed error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case failed = <-errc:
			break loop
		case <-hup:
			if err := out.Reopen(); err != nil {
				env.Log.Error("cannot reopen the output", "err", err)
			}
		}
	}
	// Stop reading first: what is not read yet stays in the kernel, and a
	// socket systemd holds hands it to the next logd.
	closeAll()
	readers.Wait()
	stopWriter() // writes out what is queued, then returns
	<-written
	return failed
}
