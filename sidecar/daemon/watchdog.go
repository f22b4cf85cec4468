package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// WatchdogInterval is how often to send WATCHDOG=1: half of WATCHDOG_USEC,
// which systemd sets for a unit with WatchdogSec=, as sd_watchdog_enabled(3)
// reads it. Zero when there is no watchdog, or it watches another process
// (WATCHDOG_PID, when set, is not ours).
func WatchdogInterval() (time.Duration, error) {
	usec := os.Getenv("WATCHDOG_USEC")
	if usec == "" {
		return 0, nil
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("WATCHDOG_PID %q: %w", pid, err)
		}
		if p != os.Getpid() {
			return 0, nil
		}
	}
	n, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("WATCHDOG_USEC %q is not a positive number of microseconds", usec)
	}
	return max(time.Duration(n)*time.Microsecond/2, time.Microsecond), nil
}

// Watchdog sends WATCHDOG=1 every WatchdogInterval until ctx ends, when
// systemd asked for it. The pings come from a goroutine of their own, so
// they prove that the process runs, not that its work progresses: they stop
// when the process is stopped (SIGSTOP, a frozen cgroup), and systemd then
// kills and restarts it. For chatmail-logd that turns a stalled sink, which
// stalls Postfix, into a dead one, which Postfix does not notice.
func Watchdog(ctx context.Context, log *slog.Logger) {
	every, err := WatchdogInterval()
	if err != nil {
		log.Warn("no watchdog pings", "err", err)
		return
	}
	if every <= 0 {
		return
	}
	failing := false
	ping := func() {
		err := Notify("WATCHDOG=1")
		if err != nil && !failing {
			log.Warn("cannot ping the systemd watchdog", "err", err) // once, not at every tick
		}
		failing = err != nil
	}
	ping()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ping()
		}
	}
}
