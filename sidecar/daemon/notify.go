package daemon

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Notify sends state (e.g. "READY=1", "STOPPING=1") to the service
// manager, as sd_notify(3) does: one datagram to the unix socket named in
// NOTIFY_SOCKET ('@' for the abstract namespace). Without NOTIFY_SOCKET,
// when not started by systemd with Type=notify, it does nothing.
func Notify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") {
		return fmt.Errorf("NOTIFY_SOCKET %q: only unix sockets are supported", addr)
	}
	// Go maps a leading '@' to the abstract namespace itself.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	if _, err := c.Write([]byte(state)); err != nil {
		_ = c.Close() // the write error says it all
		return err
	}
	return c.Close()
}
