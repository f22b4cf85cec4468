package connserve

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// A request in progress finishes and is answered during Shutdown; an idle
// connection is woken up and closed.
func TestShutdownDrains(t *testing.T) {
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: slog.New(slog.DiscardHandler)}
	started := make(chan struct{}, 2)
	served := make(chan error, 1)
	go func() {
		served <- s.Serve(ln, func(c *Conn) {
			r := bufio.NewReader(c)
			for c.AwaitRequest(time.Minute) {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				c.Busy(true)
				started <- struct{}{}
				time.Sleep(200 * time.Millisecond) // a slow request
				c.Write([]byte("done " + line))
				c.Busy(false)
			}
		})
	}()
	busy, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	idle, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy.Write([]byte("work\n"))
	<-started

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	busy.SetReadDeadline(time.Now().Add(time.Second))
	if reply, err := bufio.NewReader(busy).ReadString('\n'); reply != "done work\n" {
		t.Errorf("request in progress at shutdown: reply %q, %v", reply, err)
	}
	idle.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Error("idle connection still open after Shutdown")
	}
}
