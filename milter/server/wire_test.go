package server

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// What the tests write and read on the milter socket, as Postfix would.

// encode makes one milter packet: length, code, data.
func encode(code byte, data []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(data)+1)), append([]byte{code}, data...)...)
}

// packet makes one packet of NUL-terminated strings. A macro packet (D)
// starts with the command it is for: "M{auth_authen}".
func packet(code byte, data ...string) []byte {
	var b []byte
	for _, d := range data {
		b = append(append(b, d...), 0)
	}
	return encode(code, b)
}

// negotiate is what Postfix sends first: version 6, every action and event.
var negotiate = encode('O', binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 6), 0x1ff), 0x1fffff))

func rawPacket(t *testing.T, c net.Conn, code byte, data ...string) {
	t.Helper()
	if _, err := c.Write(packet(code, data...)); err != nil {
		t.Fatal(err)
	}
}

func rawData(t *testing.T, c net.Conn, code byte, b []byte) {
	t.Helper()
	if _, err := c.Write(encode(code, b)); err != nil {
		t.Fatal(err)
	}
}

// readCode reads one packet and returns its code.
func readCode(t *testing.T, c net.Conn) byte {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h := make([]byte, 4)
	if _, err := io.ReadFull(c, h); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, binary.BigEndian.Uint32(h))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

// negotiateRaw opens a session as Postfix does.
func negotiateRaw(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(negotiate); err != nil {
		t.Fatal(err)
	}
	if code := readCode(t, c); code != 'O' {
		t.Fatalf("negotiation answered %q", code)
	}
	return c
}

// expectSilence fails if the milter sends anything within a short while:
// Postfix reads no reply where it was told not to wait for one, so a stray
// one would be taken as the answer to a later command.
func expectSilence(t *testing.T, c net.Conn, after string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var b [1]byte
	if n, err := c.Read(b[:]); n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after %s: the milter sent something (%q, %v) where Postfix waits for nothing", after, b[:n], err)
	}
}
