// Package push posts the push notifications that new mail queued
// (metadict, accounts.QueuePushes) to the notification gateway.
//
// The queue is in PostgreSQL, so it survives restarts and is shared by
// every metadata-proxy process. A worker claims due rows with FOR UPDATE
// SKIP LOCKED and holds them for a lease (Lease): no other worker posts
// them meanwhile, and if this one dies mid-POST, they are retried when the
// lease ends. Each notification is one POST of the raw token to the
// gateway (the reference relay's protocol):
//
//   - 200: done;
//   - 410 Gone: the gateway cannot use the token any more; the token goes,
//     with its row;
//   - any other 4xx but 408 and 429: the gateway will never take this
//     notification: it is dropped at once (done, not retried);
//   - anything else (5xx, 408, 429, another status), or no answer within
//     PostTimeout: retried after 8 s, 64 s, 512 s, then every hour
//     (8 s × 8^n, at most an hour), and given up GiveUp after it was first
//     queued.
//
// After a notification is done (200, or dropped for good) its token is
// not posted again for Cooldown (push_cooldown, 30 s by default): the row
// stays until the cooldown ends, and new mail meanwhile makes one
// notification then, delayed, never dropped (accounts.PushDone). However
// much mail comes, from whichever server, a token is thus posted at most
// once a cooldown, besides the retries of a notification the gateway did
// not take (one at a time, on the delays above); an account has at most 8
// tokens (accounts.MaxDeviceTokens) of at most 6000 bytes. Nothing
// outlives the cooldown: no time a token was last posted is kept.
//
// The worker sleeps until the next row is due (at most PollInterval, for
// rows other processes queue), and Wake starts it at once. On shutdown it
// claims nothing more and finishes the POSTs in flight.
//
// Nothing logged names the account or the token: the worker does not even
// know the account.
package push

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"chatmail.dev/sidecar/accounts"
)

// Queue is what the worker needs of the store (*accounts.Store).
type Queue interface {
	ClaimPushes(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]accounts.Push, error)
	PushDone(ctx context.Context, p accounts.Push, now time.Time, cooldown time.Duration) error
	PushGone(ctx context.Context, p accounts.Push) error
	RetryPush(ctx context.Context, p accounts.Push, at time.Time) error
	DropPush(ctx context.Context, p accounts.Push) error
	NextPushDue(ctx context.Context) (time.Time, bool, error)
}

// Defaults of the worker's timing.
const (
	// PostTimeout bounds one POST, the reading of the answer included.
	PostTimeout = 10 * time.Second
	// Lease is how long a claimed row is held: well beyond PostTimeout
	// and settling the row.
	Lease = 2 * time.Minute
	// PollInterval is the longest the worker sleeps: rows queued by
	// another process are seen within it.
	PollInterval = 30 * time.Second
	// BaseDelay and MaxDelay shape the retries: BaseDelay × 8^n after the
	// n+1-th failure, at most MaxDelay.
	BaseDelay = 8 * time.Second
	MaxDelay  = time.Hour
	// DefaultCooldown is push_cooldown's default.
	DefaultCooldown = 30 * time.Second
	// settleTimeout bounds recording an attempt's result.
	settleTimeout = 5 * time.Second
	// maxAnswer is how much of the gateway's answer is read, so that the
	// connection can be reused; the rest is dropped.
	maxAnswer = 64 << 10
)

// Worker posts queued notifications. Set the fields, then call Run.
type Worker struct {
	Queue   Queue
	Gateway string // URL the tokens are posted to
	// Client posts; nil: NewClient(Concurrency).
	Client *http.Client
	// Concurrency is how many POSTs may be in flight at once.
	Concurrency int
	// GiveUp is how long after first queued a notification is dropped.
	GiveUp time.Duration
	// Cooldown is how long a token is not posted again after a
	// notification is done; zero: none.
	Cooldown time.Duration
	// Ready reports whether the store is migrated; nil: always.
	Ready   func() bool
	Log     *slog.Logger
	Metrics *Metrics
	// Now is the clock; nil: time.Now. Timing fields below: zero means
	// the constant above.
	Now          func() time.Time
	Lease        time.Duration
	PollInterval time.Duration
	BaseDelay    time.Duration
	PostTimeout  time.Duration

	once sync.Once
	wake chan struct{}
}

func (w *Worker) init() {
	w.once.Do(func() {
		w.wake = make(chan struct{}, 1)
		if w.Concurrency < 1 {
			w.Concurrency = 1
		}
		if w.Client == nil {
			w.Client = NewClient(w.Concurrency)
		}
		if w.Lease <= 0 {
			w.Lease = Lease
		}
		if w.PollInterval <= 0 {
			w.PollInterval = PollInterval
		}
		if w.BaseDelay <= 0 {
			w.BaseDelay = BaseDelay
		}
		if w.PostTimeout <= 0 {
			w.PostTimeout = PostTimeout
		}
		if w.Metrics == nil {
			w.Metrics = NewMetrics(nil)
		}
	})
}

func (w *Worker) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

// Wake makes the worker look for due rows now: a commit queued one.
func (w *Worker) Wake() {
	w.init()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run posts notifications until ctx ends, then waits for the POSTs in
// flight (at most PostTimeout) and returns.
func (w *Worker) Run(ctx context.Context) {
	w.init()
	var inflight sync.WaitGroup
	defer inflight.Wait()
	slots := make(chan struct{}, w.Concurrency)
	freed := make(chan struct{}, 1)
	for ctx.Err() == nil {
		sleep := w.PollInterval
		ready := w.Ready == nil || w.Ready()
		if !ready {
			sleep = 200 * time.Millisecond
		}
		if free := w.Concurrency - len(slots); free > 0 && ready {
			ps, err := w.Queue.ClaimPushes(ctx, w.now(), w.Lease, free)
			if err != nil && ctx.Err() == nil {
				w.Log.Warn("claiming push notifications failed", "err", err)
			}
			for _, p := range ps {
				slots <- struct{}{}
				inflight.Add(1)
				go func() {
					defer func() {
						<-slots
						select {
						case freed <- struct{}{}:
						default:
						}
						inflight.Done()
					}()
					w.attempt(p)
				}()
			}
			switch {
			case err != nil:
				sleep = 5 * time.Second // PostgreSQL is down: no log flood
			case len(ps) == free:
				// Maybe more are due: look again when a slot frees.
				sleep = w.PollInterval
			default:
				sleep = w.untilDue(ctx)
			}
		}
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
		case <-w.wake:
		case <-freed:
		case <-t.C:
		}
		t.Stop()
	}
}

// untilDue is how long to sleep before the earliest row is due.
func (w *Worker) untilDue(ctx context.Context) time.Duration {
	due, ok, err := w.Queue.NextPushDue(ctx)
	if err != nil || !ok {
		return w.PollInterval
	}
	// A row that fell due meanwhile (queued, or a lease that ended).
	return min(max(due.Sub(w.now()), 10*time.Millisecond), w.PollInterval)
}

// Outcomes of an attempt: the metric's labels.
const (
	outcomeDelivered = "delivered"
	outcomeGone      = "gone"
	outcomeRefused   = "refused" // a 4xx other than 408, 410 and 429: for good
	outcomeFailed    = "failed"  // another answer: retried
	outcomeError     = "error"   // no answer
)

// permanent reports whether the gateway's status refuses a notification
// for good: a 4xx but 408 (timeout), 429 (too many requests) and 410
// (gone: the token, not the notification). Retrying it would get the same
// answer, 8 times over 5 hours.
func permanent(status int) bool {
	return status >= 400 && status < 500 &&
		status != http.StatusRequestTimeout && status != http.StatusTooManyRequests && status != http.StatusGone
}

// attempt posts one notification and records the result. It does not
// stop for the worker's shutdown: the POST is bounded by PostTimeout.
func (w *Worker) attempt(p accounts.Push) {
	start := time.Now()
	status, err := w.post(p.Token)
	w.Metrics.duration.Observe(time.Since(start).Seconds())
	outcome := outcomeFailed
	switch {
	case err != nil:
		outcome = outcomeError
	case status == http.StatusOK:
		outcome = outcomeDelivered
	case status == http.StatusGone:
		outcome = outcomeGone
	case permanent(status):
		outcome = outcomeRefused
	}
	w.Metrics.attempts.WithLabelValues(outcome).Inc()

	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
	defer cancel()
	now := w.now()
	var serr error
	switch outcome {
	case outcomeDelivered:
		serr = w.Queue.PushDone(ctx, p, now, w.Cooldown)
	case outcomeRefused:
		// Done too: the token cools down as after a delivery, so that a
		// token the gateway refuses is not posted at the rate of mail.
		w.Log.Info("push gateway refused a notification for good, dropped", "status", status)
		serr = w.Queue.PushDone(ctx, p, now, w.Cooldown)
	case outcomeGone:
		w.Log.Info("push gateway says a device token is gone, removing it")
		serr = w.Queue.PushGone(ctx, p)
	default:
		next := now.Add(w.delay(p.Attempts))
		if next.After(p.QueuedAt.Add(w.GiveUp)) {
			w.Metrics.givenUp.Inc()
			w.Log.Warn("push notification given up", "attempts", p.Attempts+1, "status", status, "err", err)
			serr = w.Queue.DropPush(ctx, p)
			break
		}
		w.Log.Info("push notification failed, retrying", "attempts", p.Attempts+1, "status", status, "err", err, "retry_in", next.Sub(now))
		serr = w.Queue.RetryPush(ctx, p, next)
	}
	if serr != nil {
		// The lease ends the claim: the row is tried again then.
		w.Log.Warn("recording a push notification's result failed", "err", serr)
	}
}

// delay is the wait after the n+1-th failed attempt: BaseDelay × 8^n, at
// most MaxDelay.
func (w *Worker) delay(n int) time.Duration {
	d := w.BaseDelay
	for range n {
		if d >= MaxDelay {
			break
		}
		d *= 8
	}
	return min(d, MaxDelay)
}

// post posts the token and returns the gateway's status. Its error names
// neither the token (the body) nor the gateway's URL (redact).
func (w *Worker) post(token string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), w.PostTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.Gateway, bytes.NewReader([]byte(token)))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("User-Agent", "chatmail-metadata")
	resp, err := w.Client.Do(req)
	if err != nil {
		return 0, redact(err)
	}
	_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAnswer))
	resp.Body.Close()
	if err != nil && resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusGone && !permanent(resp.StatusCode) {
		return resp.StatusCode, redact(err)
	}
	return resp.StatusCode, nil
}

// redact drops the request from an HTTP client error (url.Error), which
// names the gateway's URL: the error says what failed, the config says
// where.
func redact(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) && ue.Unwrap() != nil {
		return fmt.Errorf("POST to the push gateway: %w", ue.Unwrap())
	}
	return err
}

// NewClient returns the HTTP client of the gateway: bounded dialing, TLS
// handshake and wait for headers, a few idle connections kept per
// concurrency, and redirects followed only within the gateway's host and
// scheme (a 307 or 308 keeps the body; others turn the POST into a GET,
// which the gateway does not serve: a failure, retried).
func NewClient(concurrency int) *http.Client {
	return &http.Client{
		Timeout: PostTimeout,
		Transport: &http.Transport{
			Proxy:                  http.ProxyFromEnvironment,
			DialContext:            (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:    5 * time.Second,
			ResponseHeaderTimeout:  PostTimeout,
			ExpectContinueTimeout:  time.Second,
			MaxIdleConnsPerHost:    max(concurrency, 2),
			IdleConnTimeout:        90 * time.Second,
			MaxResponseHeaderBytes: 16 << 10,
			ForceAttemptHTTP2:      true,
		},
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 || req.URL.Host != via[0].URL.Host || req.URL.Scheme != via[0].URL.Scheme {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// Metrics are the worker's Prometheus metrics.
type Metrics struct {
	attempts *prometheus.CounterVec
	givenUp  prometheus.Counter
	duration prometheus.Histogram
}

// NewMetrics registers the metrics on reg (nil: a private registry).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	const prefix = "chatmail_metadata_proxy_"
	m := &Metrics{
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: prefix + "push_attempts_total",
			Help: "POSTs to the push gateway by outcome: delivered (200), gone (410, token removed), refused (another 4xx but 408 and 429, dropped), failed (another status, retried), error (no answer, retried).",
		}, []string{"outcome"}),
		givenUp: prometheus.NewCounter(prometheus.CounterOpts{
			Name: prefix + "pushes_given_up_total",
			Help: "Push notifications dropped after push_give_up without a 200 or 410.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    prefix + "push_duration_seconds",
			Help:    "Time of one POST to the push gateway.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
	}
	reg.MustRegister(m.attempts, m.givenUp, m.duration)
	for _, o := range []string{outcomeDelivered, outcomeGone, outcomeRefused, outcomeFailed, outcomeError} {
		m.attempts.WithLabelValues(o)
	}
	return m
}
