package masking

import (
	"strings"
	"testing"
)

// BenchmarkApplyNoLog: Apply under No-Log on the kept lines of the
// fixtures (typical), and on long kept lines as a client can provoke
// (warnings quoting its input).
func BenchmarkApplyNoLog(b *testing.B) {
	var typical []Line
	n := 0
	for _, f := range fixtures(&testing.T{}) {
		if l := Parse(f.src, []byte(f.dgram)); l.Keep() {
			typical = append(typical, l)
			n += len(l.Text)
		}
	}
	b.Run("typical", func(b *testing.B) {
		b.SetBytes(int64(n / len(typical)))
		for i := 0; i < b.N; i++ {
			Apply(typical[i%len(typical)], true)
		}
	})
	for _, size := range []int{2048, 8192} {
		word := "GET /?u=carol@other.test&h=mx.other.test&ip=2001:db8::7 "
		text := pfx + "warning: non-SMTP command from unknown[192.0.2.1]: " + strings.Repeat(word, size/len(word))
		l := Parse(Postfix, []byte(text[:min(len(text), size)]))
		b.Run("long"+itoa(size), func(b *testing.B) {
			b.SetBytes(int64(len(l.Text)))
			for i := 0; i < b.N; i++ {
				Apply(l, true)
			}
		})
	}
}
