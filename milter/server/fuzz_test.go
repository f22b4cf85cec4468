package server

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

func concat(ps ...[]byte) []byte {
	var b []byte
	for _, p := range ps {
		b = append(b, p...)
	}
	return b
}

// FuzzSession sends arbitrary packets after the negotiation, as a broken or
// hostile MTA might: the server must neither crash nor hang, must end the
// session when the MTA does, and must go on serving others.
func FuzzSession(f *testing.F) {
	body := string(fixture(f, "enc-v6.eml"))
	f.Add(concat(
		packet('D', "M{auth_authen}", "alice@chat.example"), packet('M', "<alice@chat.example>"),
		packet('R', "<carol@other.example>"), packet('L', "From", " <alice@chat.example>"),
		packet('L', "Content-Type", ` multipart/encrypted; protocol="application/pgp-encrypted"; boundary="B"`),
		packet('N'), packet('B', body), packet('E'), packet('Q')))
	f.Add(concat(packet('M', "<x@other.example>"), packet('R', "<bob@chat.example>"),
		packet('L', "From", " <x@other.example>"), packet('N'), packet('B', "hello"), packet('E'),
		packet('M', "<y@other.example>"), packet('A'), packet('R', "<bob@chat.example>")))
	f.Add(concat(packet('L', "From", " x"), packet('E'), packet('B', "x"), packet('N')))
	f.Add(concat(packet('M', ""), packet('D'), packet('D', "R"), packet('R', ""), packet('E')))

	h := start(f, nil)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// Read the answers while writing: many commands can fill the
		// socket's buffer with answers.
		read := make(chan error, 1)
		go func() {
			_, err := io.Copy(io.Discard, c)
			read <- err
		}()
		if _, err := c.Write(append(append([]byte(nil), negotiate...), data...)); err == nil {
			_ = c.(*net.UnixConn).CloseWrite()
		} // else the server closed first, having refused the input
		// Whatever it answered, the server ends the session now that the
		// MTA has nothing more to say.
		if err := <-read; err != nil && !isReset(err) {
			t.Fatalf("session did not end: %v", err)
		}
		// And it still serves: a new session is negotiated.
		c2, err := net.Dial("unix", h.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		_ = c2.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c2.Write(negotiate); err != nil {
			t.Fatal(err)
		}
		reply := make([]byte, 5)
		if _, err := io.ReadFull(c2, reply); err != nil || reply[4] != 'O' {
			t.Fatalf("no negotiation after the fuzzed session: %q %v", reply, err)
		}
	})
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}
