package pgpmime

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"runtime"
	"testing"
)

// synthetic builds a PGP/MIME body whose packets are a PKESK v3 and a SEIPD v1
// with 8 KiB partial body chunks, of about size bytes. The judge does not
// decrypt, so random packet bodies are as good as real ones.
func synthetic(size int) (ct []string, body []byte) {
	rnd := rand.New(rand.NewPCG(9, 9))
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		return b
	}
	var pkts bytes.Buffer
	// PKESK v3, ECDH: key ID, a 263-bit point MPI, a 48-byte wrapped key.
	pkts.Write([]byte{0xc1, 94, 3})
	pkts.Write(randBytes(8))
	pkts.Write([]byte{18, 0x01, 0x07, 0x40})
	pkts.Write(randBytes(32))
	pkts.WriteByte(48)
	pkts.Write(randBytes(48))
	data := max(size*3/4-100, 64)
	pkts.WriteByte(0xd2)
	first := true
	for data >= 8192 {
		pkts.WriteByte(0xe0 | 13)
		chunk := randBytes(8192)
		if first {
			chunk[0] = 1
			first = false
		}
		pkts.Write(chunk)
		data -= 8192
	}
	tail := randBytes(data)
	if first {
		tail[0] = 1
	}
	if data < 192 {
		pkts.WriteByte(byte(data))
	} else {
		pkts.Write([]byte{255, byte(data >> 24), byte(data >> 16), byte(data >> 8), byte(data)})
	}
	pkts.Write(tail)

	var b bytes.Buffer
	b.WriteString("\r\n--BOUNDARY\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n")
	b.WriteString("--BOUNDARY\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n")
	b.WriteString("-----BEGIN PGP MESSAGE-----\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(pkts.Bytes())
	for len(enc) > 64 {
		b.WriteString(enc[:64])
		b.WriteString("\r\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\r\n-----END PGP MESSAGE-----\r\n\r\n--BOUNDARY--\r\n")
	return []string{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary="BOUNDARY"`}, b.Bytes()
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
