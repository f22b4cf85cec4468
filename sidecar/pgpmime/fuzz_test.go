package pgpmime

import (
	"bytes"
	"testing"
)

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// FuzzWalker feeds arbitrary packet streams to the walker, whole and byte
// by byte, with and without the skip fast path.
func FuzzWalker(f *testing.F) {
	f.Add([]byte{0xc1, 0x02, 0x03, 0x00, 0xd2, 0x02, 0x01, 0x00})
	f.Add([]byte{0x85, 0x00, 0x02, 0x03, 0x00, 0xd2, 0xe0, 0x01, 0x00})
	f.Add([]byte{0xc3, 0x02, 0x06, 0x00, 0xd2, 0xff, 0x00, 0x00, 0x00, 0x02, 0x02, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var a walker
		errA := a.feed(data)
		if errA == nil {
			errA = a.finish()
		}
		var b walker
		var errB error
		for i := 0; i < len(data) && errB == nil; i++ {
			if n := b.skippable(); n > 0 {
				n = min(n, int64(len(data)-i))
				b.skip(n)
				i += int(n) - 1
				continue
			}
			errB = b.feed(data[i : i+1])
		}
		if errB == nil {
			errB = b.finish()
		}
		if errString(errA) != errString(errB) {
			t.Fatalf("whole: %v, bytewise: %v", errA, errB)
		}
	})
}

// TestLongLine checks that memory stays bounded on a body without newlines.
func TestLongLine(t *testing.T) {
	j := NewJudge([]string{`multipart/mixed; boundary="b"`}, nil)
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	for range 100 {
		j.Write(chunk)
	}
	if c := j.lines.Cap(); c > MaxLine {
		t.Fatalf("line buffer grew to %d", c)
	}
	if res := j.Close(); res.Size != 100*64<<10 || res.SoleText != "" {
		t.Fatalf("unexpected %+v", res)
	}
}
