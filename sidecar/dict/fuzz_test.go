package dict

import (
	"bufio"
	"io"
	"log/slog"
	"testing"
)

// FuzzHandle feeds arbitrary command lines to one connection's handler, as a
// misbehaving peer would: no panic, and replies are always whole lines.
func FuzzHandle(f *testing.F) {
	for _, s := range []string{
		"H3\t2\t0\t\tauth", "Lshared/passdb/pw\"u@x\tu@x", "I0\t0\tshared/userdb/\tu",
		"B1\tu", "A1\tpriv/quota/storage\t5", "S1\tk\tv", "C1", "D1", "R1", "T1\t1\t2", "U1\tk",
		"L\x01", "B4294967296", "I18446744073709551615\t0\tx",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		var out discardLines
		w := bufio.NewWriter(&out)
		c := &conn{srv: &Server{Handler: &fakeHandler{values: map[string]string{"k": "v"}}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
		c.txs = map[uint64]*Tx{1: {ID: 1}}
		_ = c.handle(line, w)
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		if n := len(out.b); n > 0 && out.b[n-1] != '\n' {
			t.Fatalf("reply %q does not end a line", out.b)
		}
	})
}

type discardLines struct{ b []byte }

func (d *discardLines) Write(p []byte) (int, error) { d.b = append(d.b, p...); return len(p), nil }
