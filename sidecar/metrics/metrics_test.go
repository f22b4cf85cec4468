package metrics

import (
	"runtime"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDaemonSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	panics := NewPanics(reg, "metadata-proxy")
	RegisterBuildInfo(reg, "metadata-proxy")
	panics.Inc()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	want := `# HELP chatmail_metadata_proxy_build_info Always 1; the labels say which build runs.
# TYPE chatmail_metadata_proxy_build_info gauge
chatmail_metadata_proxy_build_info{goversion="` + runtime.Version() + `",version="` + Version() + `"} 1
# HELP chatmail_metadata_proxy_panics_total Panics recovered while serving; each ended one connection or message with a temporary failure.
# TYPE chatmail_metadata_proxy_panics_total counter
chatmail_metadata_proxy_panics_total 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}
