package pgpmime

import (
	"bytes"
	"errors"

	"chatmail.dev/sidecar/mimescan"
)

// Reasons an armored block is refused.
var (
	ErrArmorBegin    = errors.New("pgpmime: armor does not start with the BEGIN PGP MESSAGE line")
	ErrArmorHeader   = errors.New("pgpmime: unexpected armor header")
	ErrArmorBase64   = errors.New("pgpmime: invalid base64 in armor")
	ErrArmorChecksum = errors.New("pgpmime: malformed armor checksum line")
	ErrArmorEnd      = errors.New("pgpmime: armor has no END PGP MESSAGE line")
	ErrArmorTrailer  = errors.New("pgpmime: text after the END PGP MESSAGE line")
	ErrArmorBlanks   = errors.New("pgpmime: armor line ends in spaces or tabs")
)

var (
	armorBegin = []byte("-----BEGIN PGP MESSAGE-----")
	armorEnd   = []byte("-----END PGP MESSAGE-----")
)

// MaxArmorHeaderValue bounds the value of the one armor header allowed,
// Version, so that little cleartext can ride along in it.
const MaxArmorHeaderValue = 76

var armorVersion = []byte("Version: ")

type armorState uint8

const (
	aBegin armorState = iota
	aHeaders
	aData
	aChecksum // checksum line seen; END must follow
	aTrailer  // END seen; up to maxTrailer blank lines may follow
)

// maxTrailer is how many blank lines may follow the END line: Delta Chat
// 2.62 writes one before the delimiter, older cores two.
const maxTrailer = 2

const (
	b64Invalid = 0xff
	b64Pad     = 0xfe
)

// b64 maps a byte to its 6-bit value, b64Pad for '=', b64Invalid otherwise.
var b64 = func() (t [256]byte) {
	for i := range t {
		t[i] = b64Invalid
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	t['='] = b64Pad
	return t
}()

// armor decodes one ASCII-armored OpenPGP message line by line and feeds
// the packets to a walker. Whole lines that fall inside an opaque packet
// body are only validated and counted, never decoded.
type armor struct {
	st      armorState
	headers int     // Version headers
	trailer int     // blank lines after END
	q       [4]byte // pending base64 quantum
	qn      int
	padded  bool // base64 padding seen: no more data
	out     [MaxLine]byte
	w       walker
}

func (a *armor) reset() {
	a.st, a.headers, a.trailer, a.qn, a.padded = aBegin, 0, 0, 0, false
	a.w = walker{esk: a.w.esk[:0]}
}

// line handles one line of the part body, terminator included.
func (a *armor) line(l []byte) error {
	l = mimescan.TrimEOL(l)
	// RFC 9580 6.2 tells readers to ignore trailing whitespace; a writer
	// has no reason to put any there, so it could only be a covert channel.
	if n := len(l); n > 0 && (l[n-1] == ' ' || l[n-1] == '\t') {
		return ErrArmorBlanks
	}
	switch a.st {
	case aBegin:
		if !bytes.Equal(l, armorBegin) {
			return ErrArmorBegin
		}
		a.st = aHeaders
	case aHeaders:
		if len(l) == 0 {
			a.st = aData
			return nil
		}
		// Only one Version header: what GnuPG and others write. Other
		// keys (Comment, Hash, ...) are free text nobody needs.
		a.headers++
		if a.headers > 1 || !bytes.HasPrefix(l, armorVersion) || len(l)-len(armorVersion) > MaxArmorHeaderValue {
			return ErrArmorHeader
		}
	case aData:
		return a.data(l)
	case aChecksum:
		if !bytes.Equal(l, armorEnd) {
			return ErrArmorEnd
		}
		a.st = aTrailer
	case aTrailer:
		if a.trailer++; len(l) != 0 || a.trailer > maxTrailer {
			return ErrArmorTrailer
		}
	}
	return nil
}

// data handles a line in the base64 section.
func (a *armor) data(l []byte) error {
	if bytes.Equal(l, armorEnd) {
		if err := a.endData(); err != nil {
			return err
		}
		a.st = aTrailer
		return nil
	}
	if len(l) == 0 {
		return ErrArmorBase64
	}
	if l[0] == '=' && len(l) > 2 {
		// Not padding (that is "=" or "=="): the checksum line, "=" and
		// four base64 characters encoding the 24-bit CRC.
		if len(l) != 5 || b64[l[1]] >= 64 || b64[l[2]] >= 64 || b64[l[3]] >= 64 || b64[l[4]] >= 64 {
			return ErrArmorChecksum
		}
		if err := a.endData(); err != nil {
			return err
		}
		a.st = aChecksum
		return nil
	}
	if a.padded {
		return ErrArmorBase64
	}
	// Fast path: whole quanta that the walker only needs counted.
	if a.qn == 0 && len(l)%4 == 0 && a.w.skippable() >= int64(len(l)/4*3) {
		if plainBase64(l) {
			a.w.skip(int64(len(l) / 4 * 3))
			return nil
		}
	}
	return a.decode(l)
}

// decode decodes l into packet bytes and feeds them to the walker.
func (a *armor) decode(l []byte) error {
	if a.qn == 3 && a.q[2] == b64Pad && l[0] != '=' {
		return ErrArmorBase64 // "xx=" must be followed by the second '='
	}
	n := 0
	for i, c := range l {
		v := b64[c]
		if v == b64Pad {
			return a.pad(l[i:], n)
		}
		if v == b64Invalid {
			return ErrArmorBase64
		}
		a.q[a.qn] = v
		a.qn++
		if a.qn == 4 {
			a.out[n] = a.q[0]<<2 | a.q[1]>>4
			a.out[n+1] = a.q[1]<<4 | a.q[2]>>2
			a.out[n+2] = a.q[2]<<6 | a.q[3]
			n += 3
			a.qn = 0
		}
	}
	return a.w.feed(a.out[:n])
}

// pad handles the padding rest of a line; n bytes are already in a.out.
func (a *armor) pad(rest []byte, n int) error {
	// The quantum so far plus the padding must make four characters, and
	// padding ends the data: "xx==" gives one byte, "xxx=" two.
	switch {
	case a.qn == 2 && (bytes.Equal(rest, []byte("==")) || bytes.Equal(rest, []byte("="))):
		if len(rest) == 1 {
			// The second '=' may still come on the next line; RFC 4648 does
			// not forbid it and encoders that wrap by column can produce it.
			a.qn = 3
			a.q[2] = b64Pad
			return a.w.feed(a.out[:n])
		}
		a.out[n] = a.q[0]<<2 | a.q[1]>>4
		n++
	case a.qn == 3 && a.q[2] == b64Pad && len(rest) == 1:
		a.out[n] = a.q[0]<<2 | a.q[1]>>4
		n++
	case a.qn == 3 && a.q[2] != b64Pad && len(rest) == 1:
		a.out[n] = a.q[0]<<2 | a.q[1]>>4
		a.out[n+1] = a.q[1]<<4 | a.q[2]>>2
		n += 2
	default:
		return ErrArmorBase64
	}
	a.qn = 0
	a.padded = true
	return a.w.feed(a.out[:n])
}

// endData is called when the base64 section ends.
func (a *armor) endData() error {
	if a.qn != 0 {
		return ErrArmorBase64
	}
	return a.w.finish()
}

// finish is called at the end of the part.
func (a *armor) finish() error {
	if a.st != aTrailer {
		return ErrArmorEnd
	}
	return nil
}

// plainBase64 reports whether l holds only base64 alphabet characters, no
// padding. It is the hot loop for large messages: eight bytes per round into
// independent accumulators, so the table loads can overlap.
func plainBase64(l []byte) bool {
	var a0, a1, a2, a3 byte
	for len(l) >= 8 {
		a0 |= b64[l[0]] | b64[l[4]]
		a1 |= b64[l[1]] | b64[l[5]]
		a2 |= b64[l[2]] | b64[l[6]]
		a3 |= b64[l[3]] | b64[l[7]]
		l = l[8:]
	}
	for _, c := range l {
		a0 |= b64[c]
	}
	// Every value below 64 means no invalid byte and no '='.
	return a0|a1|a2|a3 < 64
}
