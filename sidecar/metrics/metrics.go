// Package metrics serves a daemon's Prometheus registry on its own loopback
// listener, apart from any protocol socket.
package metrics

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors,
// which every daemon exposes.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// prefix is the start of every series name of daemon: chatmail_<daemon>_.
func prefix(daemon string) string {
	return "chatmail_" + strings.ReplaceAll(daemon, "-", "_") + "_"
}

// NewPanics registers chatmail_<daemon>_panics_total on reg: the panics
// recovered while serving a connection or a callback. Anything above zero
// is a bug to report.
func NewPanics(reg prometheus.Registerer, daemon string) prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{
		Name: prefix(daemon) + "panics_total",
		Help: "Panics recovered while serving; each ended one connection or message with a temporary failure.",
	})
	reg.MustRegister(c)
	return c
}

// RegisterBuildInfo registers chatmail_<daemon>_build_info on reg: always 1,
// labelled with the module version of the binary and the Go version that
// built it.
func RegisterBuildInfo(reg prometheus.Registerer, daemon string) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: prefix(daemon) + "build_info",
		Help: "Always 1; the labels say which build runs.",
	}, []string{"version", "goversion"})
	reg.MustRegister(g)
	g.WithLabelValues(Version(), runtime.Version()).Set(1)
}

// Version is the main module's version as the go command stamped it
// (a tag, or a pseudo-version from the commit), or "(devel)".
func Version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "" {
		return "(devel)"
	}
	return bi.Main.Version
}

// Server is a running metrics listener.
type Server struct {
	srv *http.Server
	ln  net.Listener
}

// Listen binds addr and serves reg's metrics on /metrics in the background.
func Listen(addr string, reg *prometheus.Registry, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr is the bound address, useful when addr had port 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Shutdown stops the listener.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

// LatencyBuckets are histogram buckets in seconds for work that should take
// well under a millisecond and may, under trouble, take seconds.
var LatencyBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
