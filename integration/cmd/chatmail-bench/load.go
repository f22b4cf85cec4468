package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// smtpLoad is the smtp-load subcommand: a steady load of SMTP sessions for
// a fixed time, counted per second, optionally with a process stopped
// (SIGSTOP) for part of it, so that a stall shows as a gap in the
// per-second counts and as long transactions. make bench stops
// chatmail-logd this way.
//
// It prints, for each phase (before, stopped, after the stop; "all" without
// -stop-pid), the messages accepted per second (250 to the end of DATA), the
// messages that arrived in -maildir per second, the latency of the sessions
// that started in the phase (dial to the reply to QUIT), and the
// tempfailed, rejected and failed sessions; then the counts per second; and
// last one machine-readable line: accepted tempfailed rejected failed
// timed-out (the sessions of each kind; accepted counts messages).
func smtpLoad(args []string) error {
	fs := flag.NewFlagSet("smtp-load", flag.ExitOnError)
	addr := fs.String("addr", "", "MX host:port")
	from := fs.String("from", "", "envelope sender")
	user := fs.String("user", "", "recipient")
	msgFile := fs.String("msg", "", "message file")
	dkimKey := fs.String("dkim-key", "", "sign the message once with this PEM key")
	dkimSelector := fs.String("dkim-selector", "", "DKIM selector")
	perSession := fs.Int("per-session", 1, "messages per SMTP session")
	maildir := fs.String("maildir", "", "count the messages arriving in this Maildir each second")
	conc := fs.Int("c", 4, "concurrent SMTP sessions")
	duration := fs.Duration("duration", time.Minute, "how long to start sessions")
	rate := fs.Float64("rate", 0, "sessions/s over all clients (0: each client starts the next at once)")
	stopPid := fs.Int("stop-pid", 0, "SIGSTOP this process during the load (and SIGCONT it after)")
	stopAt := fs.Duration("stop-at", 15*time.Second, "when to stop it, from the start")
	stopFor := fs.Duration("stop-for", 30*time.Second, "for how long")
	timeout := fs.Duration("timeout", 2*time.Minute, "a command (or the end of DATA) answered later fails")
	perSecondFile := fs.String("per-second", "", "also write the per-second counts to this file")
	fs.Parse(args)

	msg, err := loadMessage(*msgFile, *from, *dkimKey, *dkimSelector)
	if err != nil {
		return err
	}
	secs := int(duration.Seconds())
	if secs < 1 {
		return errors.New("-duration: at least 1s")
	}
	// Sessions started in the last second may end a little after it: a few
	// seconds of slack, and then everything up to -timeout lands in the last
	// slot.
	slots := secs + 5
	var (
		accepted  = make([]atomic.Int64, slots)
		tempfails = make([]atomic.Int64, slots)
		rejects   = make([]atomic.Int64, slots)
		failures  = make([]atomic.Int64, slots)
		delivered = make([]int, secs) // cumulative, sampled at the end of each second
	)
	type sample struct {
		start time.Duration // since the load began
		lat   time.Duration
	}
	var (
		mu      sync.Mutex
		samples []sample
		firstErr,
		firstTemp string
	)
	base := 0
	if *maildir != "" {
		base = countMail(*maildir)
	}

	start := time.Now()
	slot := func() int { return min(int(time.Since(start)/time.Second), slots-1) }
	if *stopPid != 0 {
		cont := func() {
			if err := syscall.Kill(*stopPid, syscall.SIGCONT); err != nil {
				fmt.Fprintln(os.Stderr, "smtp-load: SIGCONT:", err)
			}
		}
		// Whatever happens, the process runs again when this one ends.
		defer cont()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() {
			<-sig
			cont()
			os.Exit(1)
		}()
		go func() {
			time.Sleep(time.Until(start.Add(*stopAt)))
			if err := syscall.Kill(*stopPid, syscall.SIGSTOP); err != nil {
				fmt.Fprintln(os.Stderr, "smtp-load: SIGSTOP:", err)
			}
			time.Sleep(time.Until(start.Add(*stopAt + *stopFor)))
			cont()
		}()
	}
	samplerDone := make(chan struct{})
	if *maildir != "" {
		go func() {
			defer close(samplerDone)
			for i := range secs {
				time.Sleep(time.Until(start.Add(time.Duration(i+1) * time.Second)))
				delivered[i] = countMail(*maildir) - base
			}
		}()
	} else {
		close(samplerDone)
	}

	var next atomic.Int64
	var timedOut atomic.Int64
	var wg sync.WaitGroup
	end := start.Add(*duration)
	for range *conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				due := time.Now()
				if *rate > 0 {
					k := next.Add(1) - 1
					due = start.Add(time.Duration(float64(k) / *rate * float64(time.Second)))
					time.Sleep(time.Until(due))
				}
				if !due.Before(end) || time.Now().After(end) {
					return
				}
				t := time.Now()
				ok, err := loadSession(*addr, *from, *user, msg, *perSession, *timeout)
				lat := time.Since(t)
				s := slot()
				accepted[s].Add(int64(ok))
				var se *smtp.SMTPError
				switch {
				case err == nil:
				case errors.As(err, &se) && se.Code/100 == 4:
					tempfails[s].Add(1)
				case errors.As(err, &se):
					rejects[s].Add(1)
				default:
					failures[s].Add(1)
				}
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					timedOut.Add(1)
				}
				mu.Lock()
				samples = append(samples, sample{t.Sub(start), lat})
				if err != nil && se != nil && se.Code/100 == 4 && firstTemp == "" {
					firstTemp = err.Error()
				} else if err != nil && firstErr == "" {
					firstErr = err.Error()
				}
				mu.Unlock()
				if err != nil && *rate == 0 {
					// As a sending MTA would, not at once.
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	<-samplerDone

	type phase struct {
		name     string
		from, to int // seconds
	}
	phases := []phase{{"all", 0, secs}}
	if *stopPid != 0 {
		a := int(stopAt.Seconds())
		b := min(int((*stopAt + *stopFor).Seconds()), secs)
		phases = []phase{{"before", 0, a}, {"stopped", a, b}, {"after", b, secs}}
	}
	sum := func(c []atomic.Int64, from, to int) (n int64) {
		for i := from; i < to; i++ {
			n += c[i].Load()
		}
		return n
	}
	fmt.Printf("%-8s %5s %11s %12s %8s %8s %8s %9s %8s %7s\n", "phase", "secs", "accepted/s", "delivered/s", "p50 ms", "p99 ms", "max ms", "tempfail", "reject", "failed")
	for _, p := range phases {
		if p.to <= p.from {
			continue
		}
		var lats []time.Duration
		for _, s := range samples {
			if sec := int(s.start / time.Second); sec >= p.from && sec < p.to {
				lats = append(lats, s.lat)
			}
		}
		slices.Sort(lats)
		var p50, p99, mx float64
		if n := len(lats); n > 0 {
			p50, p99, mx = ms(lats[n/2]), ms(lats[n*99/100]), ms(lats[n-1])
		}
		d := float64(p.to - p.from)
		del := "-"
		if *maildir != "" {
			prev := 0
			if p.from > 0 {
				prev = delivered[p.from-1]
			}
			del = fmt.Sprintf("%.1f", float64(delivered[p.to-1]-prev)/d)
		}
		fmt.Printf("%-8s %5d %11.1f %12s %8.1f %8.1f %8.1f %9d %8d %7d\n", p.name, p.to-p.from,
			float64(sum(accepted, p.from, p.to))/d, del, p50, p99, mx,
			sum(tempfails, p.from, p.to), sum(rejects, p.from, p.to), sum(failures, p.from, p.to))
	}
	var acc, del strings.Builder
	for i := range secs {
		fmt.Fprintf(&acc, " %d", accepted[i].Load())
		if *maildir != "" {
			prev := 0
			if i > 0 {
				prev = delivered[i-1]
			}
			fmt.Fprintf(&del, " %d", delivered[i]-prev)
		}
	}
	fmt.Printf("accepted per second: %s\n", acc.String()[1:])
	if *maildir != "" {
		fmt.Printf("delivered per second:%s\n", del.String())
	}
	if firstTemp != "" {
		fmt.Printf("first tempfail: %s\n", firstTemp)
	}
	if firstErr != "" {
		fmt.Printf("first other error: %s\n", firstErr)
	}
	if *perSecondFile != "" {
		var b bytes.Buffer
		b.WriteString("second accepted tempfailed rejected failed delivered\n")
		for i := range slots {
			d := 0
			if *maildir != "" && i < secs {
				d = delivered[i]
				if i > 0 {
					d -= delivered[i-1]
				}
			}
			fmt.Fprintf(&b, "%d %d %d %d %d %d\n", i, accepted[i].Load(), tempfails[i].Load(), rejects[i].Load(), failures[i].Load(), d)
		}
		if err := os.WriteFile(*perSecondFile, b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("%d %d %d %d %d\n", sum(accepted, 0, slots), sum(tempfails, 0, slots), sum(rejects, 0, slots), sum(failures, 0, slots), timedOut.Load())
	return nil
}

func ms(d time.Duration) float64 { return d.Seconds() * 1000 }

// loadSession sends msg n times over one SMTP session and returns how many
// the server accepted. Every command, the end of DATA included, must be
// answered within timeout.
func loadSession(addr, from, to string, msg []byte, n int, timeout time.Duration) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	// go-smtp sets a deadline per command from these.
	c.CommandTimeout, c.SubmissionTimeout = timeout, timeout
	ok := 0
	if err := c.Hello("bench.test"); err != nil {
		return 0, err
	}
	for range n {
		if err := c.SendMail(from, []string{to}, bytes.NewReader(msg)); err != nil {
			return ok, err
		}
		ok++
	}
	return ok, c.Quit()
}
