// Package testmsg splits test messages the way the judges are fed: the
// top-level Content-Type and Content-Transfer-Encoding values, and the body.
package testmsg

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"testing"

	"chatmail.dev/sidecar/mimescan"
)

// Split splits a raw message (CRLF or LF) into its top-level
// Content-Type and Content-Transfer-Encoding values and its body.
func Split(t testing.TB, raw []byte) (ct, cte []string, body []byte) {
	t.Helper()
	i := bytes.Index(raw, []byte("\r\n\r\n"))
	n := 4
	if j := bytes.Index(raw, []byte("\n\n")); i < 0 || (j >= 0 && j < i) {
		i, n = j, 2
	}
	if i < 0 {
		t.Fatal("no header/body separator")
	}
	ok := mimescan.EachField(raw[:i+n/2], func(name, value []byte) bool {
		switch {
		case bytes.EqualFold(name, []byte("Content-Type")):
			ct = append(ct, string(value))
		case bytes.EqualFold(name, []byte("Content-Transfer-Encoding")):
			cte = append(cte, string(value))
		}
		return true
	})
	if !ok {
		t.Fatal("bad header")
	}
	return ct, cte, raw[i+n:]
}

// EncryptedContentType is the top-level Content-Type of EncryptedBody.
const EncryptedContentType = `multipart/encrypted; protocol="application/pgp-encrypted"; boundary="ENCRYPTED"`

// EncryptedBody builds a PGP/MIME body of about size bytes whose packets
// are a PKESK v3 (ECDH, fields of the right sizes) and a SEIPD v1 in 8 KiB
// partial body chunks. The judges do not decrypt, so random packet bodies
// are as good as real ones.
func EncryptedBody(size int) []byte {
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
	b.WriteString("\r\n--ENCRYPTED\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n")
	b.WriteString("--ENCRYPTED\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n")
	b.WriteString("-----BEGIN PGP MESSAGE-----\r\n\r\n")
	enc := base64.StdEncoding.EncodeToString(pkts.Bytes())
	for len(enc) > 64 {
		b.WriteString(enc[:64])
		b.WriteString("\r\n")
		enc = enc[64:]
	}
	b.WriteString(enc + "\r\n-----END PGP MESSAGE-----\r\n\r\n--ENCRYPTED--\r\n")
	return b.Bytes()
}
