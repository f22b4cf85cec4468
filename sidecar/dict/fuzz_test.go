package dict

import (
	"bufio"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzHandle feeds an arbitrary session (command lines separated by LF) to
// one connection's handler, as a misbehaving peer would, until a command
// closes the connection: no panic, and replies are always whole lines.
// The seeds are single commands of both protocol versions and every
// session captured from Dovecot 2.3 and 2.4 (testdata/v3, testdata/v4).
func FuzzHandle(f *testing.F) {
	for _, s := range []string{
		"H3\t2\t0\t\tauth", "Lshared/passdb/pw\"u@x\tu@x", "I0\t0\tshared/userdb/\tu",
		"B1\tu", "A1\tpriv/quota/storage\t5", "S1\tk\tv", "C1", "D1", "R1", "T1\t1\t2", "U1\tk",
		"L\x01", "B4294967296", "I18446744073709551615\t0\tx",
		"H4\t0\t0\t\tquota\nB2\tu@x\t0\nS2\tpriv/quota/storage\t369\nS2\tpriv/quota/messages\t2\nC2",
		"H4\t0\t0\t\tmetadata\nB2\tu@x\t3600\nV2\tyes\nT2\t1795951148\t123456789\nS2\tk\tv\nC2",
		"H4\t0\t0\t\tquota\nD1", "H4\t0\t0\t\tq\nB2\tu\t4294967296", "V1\tno", "V1\tmaybe",
	} {
		f.Add(s)
	}
	for _, dir := range []string{"testdata/v3", "testdata/v4"} {
		ins, err := filepath.Glob(filepath.Join(dir, "*.in"))
		if err != nil || len(ins) == 0 {
			f.Fatalf("no captured sessions under %s: %v", dir, err)
		}
		for _, in := range ins {
			b, err := os.ReadFile(in)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(strings.TrimSuffix(string(b), "\n"))
		}
	}
	f.Fuzz(func(t *testing.T, session string) {
		var out discardLines
		w := bufio.NewWriter(&out)
		c := &conn{srv: &Server{Handler: &fakeHandler{values: map[string]string{"k": "v"}}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}}
		c.txs = map[uint64]*Tx{1: {ID: 1}}
		for _, line := range strings.SplitN(session, "\n", 64) {
			if len(line) > MaxLineLength {
				break // the reader closes the connection first
			}
			if c.handle(line, w) != nil {
				break
			}
		}
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
