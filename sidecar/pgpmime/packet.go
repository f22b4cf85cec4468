package pgpmime

import (
	"errors"
	"fmt"
)

// Reasons a packet sequence is refused.
var (
	ErrPacketHeader   = errors.New("pgpmime: malformed packet header")
	ErrPacketTag      = errors.New("pgpmime: packet other than PKESK, SKESK or SEIPD")
	ErrPacketOrder    = errors.New("pgpmime: packets are not (PKESK|SKESK)+ SEIPD")
	ErrPacketVersion  = errors.New("pgpmime: unsupported packet version")
	ErrPacketTrailing = errors.New("pgpmime: data after the SEIPD packet")
	ErrTruncated      = errors.New("pgpmime: packet data ends early")
	ErrESK            = errors.New("pgpmime: session key packet malformed or too large")
	ErrESKCount       = errors.New("pgpmime: too many session key packets")
)

// Bounds on the session key packets, the only packets whose bodies are read
// whole. The largest body RFC 9580 and the OpenPGP PQC draft allow is a v6
// PKESK for ML-KEM-1024+X448 (about 1,660 bytes); MaxESKs is one per
// recipient key of a group of about a thousand members, far beyond what
// Delta Chat groups reach (large audiences use broadcast channels, which
// encrypt to one shared secret: a single SKESK).
const (
	MaxESKSize = 2048
	MaxESKs    = 1024
)

// OpenPGP packet tags (RFC 9580 5).
const (
	tagPKESK = 1
	tagSKESK = 3
	tagSEIPD = 18
)

type walkState uint8

const (
	wHeader walkState = iota // reading a packet header
	wLength                  // reading the next length of a partial body
	wBody                    // inside a body chunk
	wEnded                   // the SEIPD packet has ended
)

// walker checks an OpenPGP packet sequence from its decoded bytes. It reads
// packet headers and the version octet of each body, and only counts the
// rest.
type walker struct {
	st      walkState
	hdr     [6]byte
	hn      int
	tag     byte
	newFmt  bool
	remain  int64 // bytes left in the current body chunk
	partial bool  // more chunks follow the current one
	first   bool  // next body byte is the version octet
	nESK    int
	gen     byte // 1: PKESK v3/SKESK v4 seen, 2: PKESK v6/SKESK v6 seen
	err     error
	esk     []byte // body of the current session key packet, kept across resets
}

// isESK reports whether the current packet is a session key packet.
func (w *walker) isESK() bool { return w.tag == tagPKESK || w.tag == tagSKESK }

// skippable is how many upcoming bytes the walker would only count.
func (w *walker) skippable() int64 {
	if w.st == wBody && !w.first && w.err == nil && !w.isESK() {
		return w.remain
	}
	return 0
}

// skip counts n opaque body bytes, n <= skippable().
func (w *walker) skip(n int64) {
	w.remain -= n
	if w.remain == 0 {
		w.endChunk()
	}
}

// feed consumes decoded bytes.
func (w *walker) feed(p []byte) error {
	for len(p) > 0 && w.err == nil {
		switch w.st {
		case wEnded:
			w.err = ErrPacketTrailing
		case wHeader, wLength:
			w.hdr[w.hn] = p[0]
			w.hn++
			p = p[1:]
			w.header()
		case wBody:
			if w.first {
				w.version(p[0])
				w.first = false
			}
			n := int64(len(p))
			if n > w.remain {
				n = w.remain
			}
			if w.isESK() {
				w.esk = append(w.esk, p[:n]...)
			}
			p = p[n:]
			w.remain -= n
			if w.remain == 0 {
				w.endChunk()
			}
		}
	}
	return w.err
}

// header tries to complete the packet header (or partial length) in w.hdr.
func (w *walker) header() {
	h := w.hdr[:w.hn]
	if w.st == wHeader {
		if h[0]&0x80 == 0 {
			w.err = ErrPacketHeader
			return
		}
		w.newFmt = h[0]&0x40 != 0
		if !w.newFmt {
			// Legacy format (RFC 9580 4.2.2): 4-bit tag, length type in bits 1-0.
			w.tag = h[0] >> 2 & 0x0f
			n := [4]int{1, 2, 4, -1}[h[0]&3]
			if n < 0 { // indeterminate length
				w.err = ErrPacketHeader
				return
			}
			if len(h) < 1+n {
				return
			}
			var l int64
			for _, b := range h[1:] {
				l = l<<8 | int64(b)
			}
			w.begin(l, false)
			return
		}
		w.tag = h[0] & 0x3f
		h = h[1:]
	}
	if len(h) == 0 {
		return
	}
	// New-format length (RFC 9580 4.2.1).
	switch o := h[0]; {
	case o < 192:
		w.begin(int64(o), false)
	case o < 224:
		if len(h) < 2 {
			return
		}
		w.begin(int64(o-192)<<8+int64(h[1])+192, false)
	case o < 255:
		w.begin(int64(1)<<(o&0x1f), true)
	default:
		if len(h) < 5 {
			return
		}
		w.begin(int64(h[1])<<24|int64(h[2])<<16|int64(h[3])<<8|int64(h[4]), false)
	}
}

// begin starts a body chunk of length l after a complete header.
func (w *walker) begin(l int64, partial bool) {
	cont := w.st == wLength
	w.hn = 0
	w.remain, w.partial, w.st = l, partial, wBody
	if cont {
		if l == 0 {
			w.endChunk() // a final zero-length chunk is allowed
		}
		return
	}
	switch w.tag {
	case tagPKESK, tagSKESK:
		if partial { // RFC 9580 4.2.1.4: only data packets may be partial
			w.err = ErrPacketHeader
		}
		w.nESK++
		w.esk = w.esk[:0]
		switch {
		case l > MaxESKSize:
			w.err = ErrESK
		case w.nESK > MaxESKs:
			w.err = ErrESKCount
		}
	case tagSEIPD:
		if w.nESK == 0 {
			w.err = ErrPacketOrder
		}
	default:
		w.err = fmt.Errorf("%w: tag %d", ErrPacketTag, w.tag)
	}
	if l == 0 {
		w.err = ErrPacketHeader // no room for the version octet
	}
	w.first = true
}

// version checks the version octet of the current packet.
func (w *walker) version(v byte) {
	var gen byte
	switch {
	case w.tag == tagPKESK && v == 3, w.tag == tagSKESK && v == 4, w.tag == tagSEIPD && v == 1:
		gen = 1
	case w.tag == tagPKESK && v == 6, w.tag == tagSKESK && v == 6, w.tag == tagSEIPD && v == 2:
		gen = 2
	default:
		w.err = fmt.Errorf("%w: tag %d version %d", ErrPacketVersion, w.tag, v)
		return
	}
	if w.gen != 0 && w.gen != gen {
		// RFC 9580 5.1, 5.3: v3 PKESK and v4 SKESK precede SEIPD v1 only,
		// v6 ones SEIPD v2 only.
		w.err = fmt.Errorf("%w: mixed v1 and v2 encryption", ErrPacketVersion)
		return
	}
	w.gen = gen
}

// endChunk is called when the current body chunk is used up.
func (w *walker) endChunk() {
	switch {
	case w.first:
		// An empty body; begin already flagged it.
	case w.partial:
		w.st = wLength
	case w.tag == tagSEIPD:
		w.st = wEnded
	default:
		if w.err == nil && !validESK(w.tag, w.esk) {
			w.err = ErrESK
		}
		w.st = wHeader
	}
}

// finish reports whether the data ended right after a complete SEIPD packet.
func (w *walker) finish() error {
	if w.err != nil {
		return w.err
	}
	if w.st != wEnded {
		if w.st == wHeader && w.hn == 0 {
			return ErrPacketOrder // no SEIPD packet
		}
		return ErrTruncated
	}
	return nil
}

// CheckPackets checks a whole decoded packet stream the way the judge
// checks the armored payload of a message: (PKESK|SKESK)+ SEIPD.
func CheckPackets(data []byte) error {
	var w walker
	if err := w.feed(data); err != nil {
		return err
	}
	return w.finish()
}
