package bounce

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// FuzzBounce judges arbitrary bodies under arbitrary top-level header
// values: it must not panic, and the verdict must not depend on how the
// body is split into writes (whole, byte by byte, random chunks), nor on
// what the judge judged before Reset.
func FuzzBounce(f *testing.F) {
	files, _ := filepath.Glob(fixtureDir + "/*.eml")
	for _, name := range files {
		raw, err := os.ReadFile(name)
		if err != nil || len(raw) > 64<<10 {
			continue
		}
		ct, cte, body := splitMessage(f, raw)
		if len(ct) != 1 {
			continue
		}
		e := ""
		if len(cte) == 1 {
			e = cte[0]
		}
		f.Add(ct[0], e, body, uint64(len(body)))
	}
	prev := NewJudge()
	f.Fuzz(func(t *testing.T, ct, cte string, body []byte, seed uint64) {
		cts := []string{ct}
		var ctes []string
		if cte != "" {
			ctes = []string{cte}
		}
		j := NewJudge()
		want := errString(judgeSplit(j, cts, ctes, body, whole))
		if got := errString(judgeSplit(j, cts, ctes, body, oneByte)); got != want {
			t.Fatalf("byte by byte: %s, whole: %s", got, want)
		}
		rnd := rand.New(rand.NewPCG(seed, seed>>32))
		if got := errString(judgeSplit(j, cts, ctes, body, random(rnd))); got != want {
			t.Fatalf("random chunks: %s, whole: %s", got, want)
		}
		// A judge reused across inputs judges as a new one.
		if got := errString(judgeSplit(prev, cts, ctes, body, whole)); got != want {
			t.Fatalf("reused judge: %s, new judge: %s", got, want)
		}
	})
}
