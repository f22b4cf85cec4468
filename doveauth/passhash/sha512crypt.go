package passhash

import (
	"crypto/sha512"
	"strconv"
)

// cryptAlphabet is the base64 alphabet of crypt(3).
const cryptAlphabet = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

const defaultRounds = 5000

// SHA512CryptWithSalt returns the glibc crypt(3) "$6$" hash of password
// (Ulrich Drepper's SHA-crypt specification). rounds 0 means the default
// 5000, which is written without a rounds= field, as glibc does.
func SHA512CryptWithSalt(password, salt string, rounds int) string {
	if len(salt) > 16 {
		salt = salt[:16]
	}
	explicitRounds := rounds != 0
	if rounds == 0 {
		rounds = defaultRounds
	}
	rounds = min(max(rounds, 1000), 999999999)
	p, s := []byte(password), []byte(salt)

	h := sha512.New()
	h.Write(p)
	h.Write(s)
	h.Write(p)
	b := h.Sum(nil)

	h.Reset()
	h.Write(p)
	h.Write(s)
	for n := len(p); n > 0; n -= 64 {
		h.Write(b[:min(n, 64)])
	}
	for n := len(p); n > 0; n >>= 1 {
		if n&1 != 0 {
			h.Write(b)
		} else {
			h.Write(p)
		}
	}
	a := h.Sum(nil)

	h.Reset()
	for range len(p) {
		h.Write(p)
	}
	pSeq := repeatTo(h.Sum(nil), len(p))

	h.Reset()
	for range 16 + int(a[0]) {
		h.Write(s)
	}
	sSeq := repeatTo(h.Sum(nil), len(s))

	c := a
	for i := range rounds {
		h.Reset()
		if i&1 != 0 {
			h.Write(pSeq)
		} else {
			h.Write(c)
		}
		if i%3 != 0 {
			h.Write(sSeq)
		}
		if i%7 != 0 {
			h.Write(pSeq)
		}
		if i&1 != 0 {
			h.Write(c)
		} else {
			h.Write(pSeq)
		}
		c = h.Sum(c[:0])
	}

	out := make([]byte, 0, 123)
	out = append(out, "$6$"...)
	if explicitRounds {
		out = append(out, "rounds="...)
		out = strconv.AppendInt(out, int64(rounds), 10)
		out = append(out, '$')
	}
	out = append(out, s...)
	out = append(out, '$')
	// The digest bytes are written in groups of three in this permuted order.
	for i := range 21 {
		x, y, z := c[i], c[i+21], c[i+42]
		switch i % 3 {
		case 1:
			x, y, z = y, z, x
		case 2:
			x, y, z = z, x, y
		}
		out = b64From24(out, x, y, z, 4)
	}
	out = b64From24(out, 0, 0, c[63], 2)
	return string(out)
}

func b64From24(out []byte, b2, b1, b0 byte, n int) []byte {
	w := uint(b2)<<16 | uint(b1)<<8 | uint(b0)
	for range n {
		out = append(out, cryptAlphabet[w&0x3f])
		w >>= 6
	}
	return out
}

func repeatTo(d []byte, n int) []byte {
	r := make([]byte, n)
	for i := range r {
		r[i] = d[i%len(d)]
	}
	return r
}
