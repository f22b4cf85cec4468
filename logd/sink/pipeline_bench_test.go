package sink

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"chatmail.dev/logd/masking"
)

// benchSenderEnv makes the test binary BenchmarkPipeline's sender, a
// child process, so that the CPU the benchmark measures (RUSAGE_SELF) is
// the sink's alone.
const benchSenderEnv = "LOGD_BENCH_SENDER"

// benchSender sends n lines of the fixture to path, with a pause after
// each when pause > 0: "path n pause-ns".
func benchSender(env string) int {
	var path string
	var n int
	var pause int64
	if _, err := fmt.Sscan(env, &path, &n, &pause); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lines, err := benchLines()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_DGRAM, 0)
	if err == nil {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for i := range n {
		for {
			_, err := syscall.Write(fd, lines[i%len(lines)])
			if err == nil {
				break
			}
			if err != syscall.EINTR {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
		}
		if pause > 0 {
			time.Sleep(time.Duration(pause))
		}
	}
	return 0
}

func benchLines() ([][]byte, error) {
	b, err := os.ReadFile("../masking/testdata/postfix-3.10.13.log")
	if err != nil {
		return nil, err
	}
	var lines [][]byte
	for l := range bytes.Lines(b) {
		lines = append(lines, bytes.TrimSuffix(l, []byte("\n")))
	}
	return lines, nil
}

// BenchmarkPipeline sends b.N datagrams (the captured Postfix 3.10 lines,
// cycled) through a real unixgram socket into ReadLoop, the queue and
// WriteLoop, to a File, and waits until every one is written or dropped.
// One op is one line. cpu-ns/line is the process's CPU (user+system; the
// sender is a child process) per line, ctxsw/line its context switches (a
// thread going to sleep and being woken: what costs most, and what CPU
// time on a loaded machine shows least reliably), allocs/op allocations
// per line; all three include the start of the sender, spread over b.N.
// ns/op, wall time per line, includes that start and the last FlushDelay.
// "burst" sends as fast as the socket takes; "trickle" pauses 500 µs
// after each line (about 1 ms with the timer's slack), as a mail server
// under ordinary load logs: compare with Postfix's postlogd there.
//
//	go test -run - -bench Pipeline -benchtime 2000x ./sink
func BenchmarkPipeline(b *testing.B) {
	for _, mode := range []struct {
		name  string
		nolog bool
	}{{"nolog=off", false}, {"nolog=on", true}} {
		for _, pace := range []struct {
			name  string
			pause time.Duration
		}{{"burst", 0}, {"trickle", 500 * time.Microsecond}} {
			b.Run(mode.name+"/"+pace.name, func(b *testing.B) {
				benchPipeline(b, mode.nolog, pace.pause)
			})
		}
	}
}

func benchPipeline(b *testing.B, nolog bool, pause time.Duration) {
	dir := b.TempDir()
	path := filepath.Join(dir, "log.sock")
	c, err := Listen(path, 0o666, 4<<20)
	if err != nil {
		b.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	q := NewQueue(65536, 16<<20, m, flag(nolog))
	out, err := OpenFile(filepath.Join(dir, "mail.log"), 100<<20, 2)
	if err != nil {
		b.Fatal(err)
	}
	read := make(chan error, 1)
	go func() { read <- ReadLoop(c, masking.Postfix, q) }()
	ctx, cancel := context.WithCancel(context.Background())
	written := make(chan struct{})
	go func() { WriteLoop(ctx, q, out); close(written) }()
	handled := func() float64 {
		n := testutil.ToFloat64(m.Written)
		for _, r := range []string{ReasonQueueFull, ReasonNoLog, ReasonWriteError} {
			n += testutil.ToFloat64(m.Dropped.WithLabelValues(r))
		}
		return n
	}
	var ru0, ru1 syscall.Rusage
	b.ReportAllocs()
	b.ResetTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	sender := exec.Command(os.Args[0])
	sender.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", benchSenderEnv, path, b.N, pause.Nanoseconds()))
	sender.Stderr = os.Stderr
	if err := sender.Run(); err != nil {
		b.Fatal(err)
	}
	for last, since := handled(), time.Now(); last < float64(b.N); {
		time.Sleep(10 * time.Millisecond)
		if n := handled(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > 10*time.Second {
			b.Fatalf("%v of %d lines handled", n, b.N)
		}
	}
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	b.StopTimer()
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()) + time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/line")
	b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw+ru1.Nivcsw-ru0.Nivcsw)/float64(b.N), "ctxsw/line")
	b.ReportMetric(testutil.ToFloat64(m.Dropped.WithLabelValues(ReasonQueueFull))/float64(b.N), "full-drops/line")
	c.Close()
	if err := <-read; err != nil {
		b.Error(err)
	}
	cancel()
	<-written
	if err := out.Close(); err != nil {
		b.Error(err)
	}
}
