package pgpmime

// validESK reports whether body is a whole PKESK (tag 1) or SKESK (tag 3)
// packet body whose every field has the length its version and algorithm
// give it (RFC 9580 5.1 and 5.3; the ML-KEM algorithms of the OpenPGP PQC
// draft). A body with bytes to spare, or a field of the wrong size, is
// refused: no room is left for text riding along.
func validESK(tag byte, body []byte) bool {
	if len(body) == 0 {
		return false
	}
	r := eskReader{b: body[1:], ok: true}
	switch {
	case tag == tagPKESK && body[0] == 3:
		r.take(8) // key ID
		r.pkeskFields(r.byte())
	case tag == tagPKESK && body[0] == 6:
		switch n := r.byte(); n {
		case 0: // anonymous recipient
		case 21, 33: // key version and a v4 (20-byte) or v6 (32-byte) fingerprint
			if v := r.byte(); (v == 4) != (n == 21) || (v == 6) != (n == 33) {
				return false
			}
			r.take(int(n) - 1)
		default:
			return false
		}
		r.pkeskFields(r.byte())
	case tag == tagSKESK && body[0] == 4:
		r.symAlgo()
		r.s2k(-1)
		// An optional encrypted session key: algorithm octet and a key of
		// 16 to 32 bytes, encrypted with CFB, so as long.
		if n := len(r.b); n != 0 && (n < 17 || n > 33) {
			return false
		}
		r.b = nil
	case tag == tagSKESK && body[0] == 6:
		count := int(r.byte())
		start := len(r.b)
		r.symAlgo()
		iv := map[byte]int{1: 16, 2: 15, 3: 12}[r.byte()] // EAX, OCB, GCM
		if iv == 0 {
			return false
		}
		r.s2k(int(r.byte()))
		r.take(iv)
		if start-len(r.b) != count {
			return false
		}
		// The session key (16 to 32 bytes) and the 16-byte AEAD tag.
		if n := len(r.b); n < 32 || n > 48 {
			return false
		}
		r.b = nil
	default:
		return false
	}
	return r.ok && len(r.b) == 0
}

// eskReader reads fields off a session key packet body; a short read
// clears ok.
type eskReader struct {
	b  []byte
	ok bool
}

func (r *eskReader) fail() { r.b, r.ok = nil, false }

func (r *eskReader) take(n int) []byte {
	if n < 0 || n > len(r.b) {
		r.fail()
		return nil
	}
	p := r.b[:n]
	r.b = r.b[n:]
	return p
}

func (r *eskReader) byte() byte {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

// mpi reads a multiprecision integer of at most maxBits bits with no
// leading zero bits (RFC 9580 3.2).
func (r *eskReader) mpi(maxBits int) {
	hi, lo := r.byte(), r.byte()
	bits := int(hi)<<8 | int(lo)
	if bits == 0 || bits > maxBits {
		r.fail()
		return
	}
	p := r.take((bits + 7) / 8)
	if p != nil && p[0]>>((bits-1)%8) != 1 {
		r.fail()
	}
}

// symAlgo reads a symmetric algorithm octet: IDEA to AES-256, Twofish,
// Camellia (RFC 9580 9.3), never plaintext.
func (r *eskReader) symAlgo() {
	if a := r.byte(); a == 0 || a > 13 {
		r.fail()
	}
}

// s2k reads a string-to-key specifier (RFC 9580 3.7) of the given size, or
// of the size its type implies when size is -1.
func (r *eskReader) s2k(size int) {
	want := map[byte]int{0: 2, 1: 10, 3: 11, 4: 20}
	if len(r.b) == 0 {
		r.fail()
		return
	}
	n, ok := want[r.b[0]]
	if !ok || (size >= 0 && size != n) {
		r.fail()
		return
	}
	r.take(n)
}

// pkeskFields reads the algorithm-specific fields of a PKESK (RFC 9580
// 5.1.3-5.1.7; ML-KEM+X25519 and ML-KEM+X448 from the PQC draft). In v3
// the wrapped key's size also counts the symmetric algorithm octet.
func (r *eskReader) pkeskFields(algo byte) {
	switch algo {
	case 1, 2: // RSA
		r.mpi(16384)
	case 16: // Elgamal
		r.mpi(16384)
		r.mpi(16384)
	case 18: // ECDH: ephemeral point, then the wrapped key with its size
		r.mpi(1024)
		r.wrapped(56)
	case 25: // X25519
		r.take(32)
		r.wrapped(41)
	case 26: // X448
		r.take(56)
		r.wrapped(41)
	case 35: // ML-KEM-768+X25519
		r.take(32)
		r.take(1088)
		r.wrapped(41)
	case 36: // ML-KEM-1024+X448
		r.take(56)
		r.take(1568)
		r.wrapped(41)
	default:
		r.fail()
	}
}

// wrapped reads a one-octet size and that many bytes, at least 16 and at
// most max: a wrapped session key.
func (r *eskReader) wrapped(max int) {
	n := int(r.byte())
	if n < 16 || n > max {
		r.fail()
		return
	}
	r.take(n)
}
