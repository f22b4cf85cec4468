// Package authhttp serves Dovecot 2.4's Lua passdb and userdb
// (deploy/dovecot24/chatmail-auth.lua) over HTTP/1.1 on a unix socket.
// Dovecot 2.4 has no dict passdb, so its Lua script asks doveauth here
// what Dovecot 2.3 asks over the dict; the answers and every rule behind
// them are accountdict's, the same for both versions.
//
// Never on a TCP port: a loopback port is open to every local user, and
// this endpoint hands out password hashes and creates accounts. The
// socket's mode and group ([doveauth] http_socket_mode, http_socket_group)
// admit Dovecot's auth workers only.
//
// Every request is a POST of an HTML form (application/x-www-form-urlencoded,
// at most 64 KiB); every answer is text/plain, one key=value field a line:
//
//	POST /passdb  user, password_length
//	    200 password=<hash>                      the account; Dovecot checks the password
//	    403 password=<hash> reason=<text>        blocked: refused once the password matches
//	    404                                      no such account: ask /create
//	POST /create  user, password                 a first login
//	    200 password=<hash>                      created (or created meanwhile by another login)
//	    403 password=<hash> reason=<text>        blocked (created meanwhile, then blocked)
//	    404                                      refused: a creation rule, a tombstone, not our domain
//	POST /userdb  user
//	    200 home=<dir> uid=<user> gid=<group>
//	    404                                      no such account
//	POST /users   (no fields)                    doveadm's commands over all users (-A)
//	    200 user=<address>, a line per account
//	any 503 error=<text>                         try again later: the store, the creation rate
//	any 400, 405, 415                           a bad request (400 for an unknown path too)
//
// The password travels in /create only, so a login to an existing
// account never gives doveauth the password, and /passdb gets its length
// only, to refuse overlong passwords before Dovecot hashes them
// (password_max_length). Requests and answers are never logged; errors
// name no one (sidecar/logging's rules).
package authhttp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"chatmail.dev/doveauth/accountdict"
	"chatmail.dev/sidecar/connserve"
)

// MaxRequestBody bounds a request's form, as the dict protocol bounds a line.
const MaxRequestBody = 64 * 1024

// BlockedReason is what a blocked account's login is refused with.
const BlockedReason = "This account is blocked."

// Accounts answers the questions; *accountdict.Service does.
type Accounts interface {
	Passdb(ctx context.Context, user string, passwordLen int) (string, accountdict.Result, error)
	Create(ctx context.Context, user, password string) (string, accountdict.Result, error)
	Userdb(ctx context.Context, user string) (accountdict.User, accountdict.Result, error)
	Users(ctx context.Context, emit func(addr string) error) error
}

// Server serves the API on unix sockets in the shape of the daemons' other
// protocol servers: Serve(ln) until Shutdown(ctx), which lets requests in
// progress finish within ctx.
type Server struct {
	Accounts Accounts
	// Ready, if set, says whether the account store can be used; until it
	// does every request is answered 503.
	Ready func() bool
	Log   *slog.Logger
	// Panics, if set, counts the panics recovered in handlers; the request
	// gets a 500 (for Dovecot a temporary failure), the server goes on.
	Panics connserve.Counter
	// IdleTimeout closes a kept-alive connection that sends nothing for
	// this long.
	IdleTimeout time.Duration
	// RequestTimeout bounds answering one request.
	RequestTimeout time.Duration

	once sync.Once
	srv  *http.Server
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = connserve.ErrServerClosed

func (s *Server) init() {
	s.once.Do(func() {
		log := s.Log
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		s.srv = &http.Server{
			Handler:           s,
			ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      time.Minute,
			IdleTimeout:       s.IdleTimeout,
			MaxHeaderBytes:    16 * 1024,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	})
}

// Serve accepts connections on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	s.init()
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting, closes idle connections, lets every request in
// progress be answered, and waits for that. When ctx ends first it closes
// the connections still open and returns ctx.Err(): Dovecot sees a failure
// it reports as temporary.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close() // out of budget: the error to report is ctx's
	}
	return err
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.recovered(p)
			reply(w, http.StatusInternalServerError, "error", "internal error, try again later")
		}
	}()
	var answer func(context.Context, *http.Request, http.ResponseWriter)
	switch r.URL.Path {
	case "/passdb":
		answer = s.passdb
	case "/create":
		answer = s.create
	case "/userdb":
		answer = s.userdb
	case "/users":
		answer = s.users
	default:
		// Not 404, which answers "no such account".
		reply(w, http.StatusBadRequest, "error", "no such endpoint")
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		reply(w, http.StatusMethodNotAllowed, "error", "POST only")
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/x-www-form-urlencoded") {
		reply(w, http.StatusUnsupportedMediaType, "error", "want application/x-www-form-urlencoded")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBody)
	if err := r.ParseForm(); err != nil {
		// ParseForm's errors may quote the form: they stay unsaid.
		reply(w, http.StatusBadRequest, "error", "malformed form")
		return
	}
	if s.Ready != nil && !s.Ready() {
		reply(w, http.StatusServiceUnavailable, "error", "account store not ready, try again later")
		return
	}
	ctx := r.Context()
	if r.URL.Path == "/users" {
		// A listing reads every row: bounded like the dict's iteration.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Minute)
		defer cancel()
	} else if s.RequestTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.RequestTimeout)
		defer cancel()
	}
	answer(ctx, r, w)
}

func (s *Server) passdb(ctx context.Context, r *http.Request, w http.ResponseWriter) {
	user, ok := field(r, "user")
	n, err := strconv.Atoi(r.PostForm.Get("password_length"))
	if !ok || err != nil || n < 0 {
		reply(w, http.StatusBadRequest, "error", "want user and password_length")
		return
	}
	hash, res, err := s.Accounts.Passdb(ctx, user, n)
	passdbReply(w, hash, res, err)
}

func (s *Server) create(ctx context.Context, r *http.Request, w http.ResponseWriter) {
	user, ok1 := field(r, "user")
	password, ok2 := field(r, "password")
	// An empty password is no login: refused here, before an account that
	// exists meanwhile would be answered with its hash (found by FuzzRequest).
	if !ok1 || !ok2 || password == "" {
		reply(w, http.StatusBadRequest, "error", "want user and password")
		return
	}
	hash, res, err := s.Accounts.Create(ctx, user, password)
	passdbReply(w, hash, res, err)
}

func passdbReply(w http.ResponseWriter, hash string, res accountdict.Result, err error) {
	switch {
	case err != nil:
		reply(w, http.StatusServiceUnavailable, "error", err.Error())
	case res == accountdict.Blocked:
		reply(w, http.StatusForbidden, "password", hash, "reason", BlockedReason)
	case res == accountdict.NotFound:
		reply(w, http.StatusNotFound)
	default: // Found, Created
		reply(w, http.StatusOK, "password", hash)
	}
}

func (s *Server) userdb(ctx context.Context, r *http.Request, w http.ResponseWriter) {
	user, ok := field(r, "user")
	if !ok {
		reply(w, http.StatusBadRequest, "error", "want user")
		return
	}
	u, res, err := s.Accounts.Userdb(ctx, user)
	switch {
	case err != nil:
		reply(w, http.StatusServiceUnavailable, "error", err.Error())
	case res == accountdict.NotFound:
		reply(w, http.StatusNotFound)
	default:
		reply(w, http.StatusOK, "home", u.Home, "uid", u.UID, "gid", u.GID)
	}
}

func (s *Server) users(ctx context.Context, r *http.Request, w http.ResponseWriter) {
	// Gathered first, so that a failure midway is a 503, not a short list.
	var users []string
	err := s.Accounts.Users(ctx, func(addr string) error {
		users = append(users, "user", addr)
		return nil
	})
	if err != nil {
		reply(w, http.StatusServiceUnavailable, "error", err.Error())
		return
	}
	reply(w, http.StatusOK, users...)
}

// field returns a form field given exactly once.
func field(r *http.Request, name string) (string, bool) {
	v := r.PostForm[name]
	if len(v) != 1 {
		return "", false
	}
	return v[0], true
}

// reply writes the status and the key=value fields, one a line. No value
// holds a line break: hashes, homes and doveauth's own error texts never do,
// and a value that did would be cut there rather than forge a field.
func reply(w http.ResponseWriter, status int, kv ...string) {
	var b strings.Builder
	for i := 0; i+1 < len(kv); i += 2 {
		v := kv[i+1]
		if j := strings.IndexAny(v, "\r\n"); j >= 0 {
			v = v[:j]
		}
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(v)
		b.WriteByte('\n')
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(b.Len()))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String())) // a lost peer sees a failure and retries
}

func (s *Server) recovered(p any) {
	if s.Log != nil {
		s.Log.Error("panic while serving a request", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	}
	if s.Panics != nil {
		s.Panics.Inc()
	}
}
