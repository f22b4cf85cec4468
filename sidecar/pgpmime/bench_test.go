package pgpmime

import (
	"runtime"
	"testing"

	"chatmail.dev/sidecar/internal/testmsg"
)

// synthetic builds a PGP/MIME body of about size bytes.
func synthetic(size int) (ct []string, body []byte) {
	return []string{testmsg.EncryptedContentType}, testmsg.EncryptedBody(size)
}

func TestSynthetic(t *testing.T) {
	for _, size := range []int{100, 4 << 10, 1 << 20} {
		ct, body := synthetic(size)
		j := NewJudge(ct, nil)
		j.Write(body)
		if res := j.Close(); res.Encrypted != nil {
			t.Fatalf("%d: %v", size, res.Encrypted)
		}
	}
}

// judgeChunked judges body in milter-sized chunks (at most 64 KiB each).
func judgeChunked(j *Judge, ct []string, body []byte) Result {
	j.Reset(ct, nil)
	for p := body; len(p) > 0; p = p[min(len(p), 64<<10):] {
		j.Write(p[:min(len(p), 64<<10)])
	}
	return j.Close()
}

func benchJudge(b *testing.B, size int) {
	ct, body := synthetic(size)
	j := NewJudge(ct, nil)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if judgeChunked(j, ct, body).Encrypted != nil {
			b.Fatal("not encrypted")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verdicts/s")
}

func BenchmarkJudge4K(b *testing.B) { benchJudge(b, 4<<10) }
func BenchmarkJudge1M(b *testing.B) { benchJudge(b, 1<<20) }

// Memory must stay flat whatever the message size: judging 16 MiB allocates
// no more than judging 4 KiB.
func TestFlatMemory(t *testing.T) {
	allocs := func(size int) float64 {
		ct, body := synthetic(size)
		j := NewJudge(ct, nil)
		return testing.AllocsPerRun(3, func() {
			if judgeChunked(j, ct, body).Encrypted != nil {
				t.Fatal("not encrypted")
			}
		})
	}
	small, large := allocs(4<<10), allocs(16<<20)
	if large > small {
		t.Errorf("judging 16 MiB took %.0f allocations, 4 KiB %.0f: memory grows with the message", large, small)
	}
	ct, body := synthetic(16 << 20)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	judgeChunked(NewJudge(ct, nil), ct, body)
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<10 {
		t.Errorf("judging 16 MiB allocated %d bytes", n)
	}
}
