package mailpolicy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgp "github.com/ProtonMail/go-crypto/openpgp/v2"
)

// autocrypt keeps an Autocrypt field (Autocrypt 1.1 2.1) whose addr is the
// From address and whose keydata is one OpenPGP public key of at most
// MaxAutocryptKey bytes, and rewrites it without the optional attributes
// ("_" names) a client may add. Anything else removes it: then Delta Chat
// learns the key from inside the encryption, or, for a legacy Secure-Join
// request, the handshake stops, and nothing rides along.
func autocrypt(t *Txn, v string) (string, bool) {
	var addr, prefer, keydata string
	extra := false
	for _, attr := range strings.Split(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(attr), "=")
		if !ok {
			return "", false
		}
		switch k = strings.ToLower(strings.TrimSpace(k)); {
		case k == "addr" && addr == "":
			addr = normalize(strings.TrimSpace(val))
		case k == "prefer-encrypt" && prefer == "":
			prefer = strings.TrimSpace(val)
			if prefer != "mutual" && prefer != "nopreference" {
				return "", false
			}
		case k == "keydata" && keydata == "":
			keydata = strings.Join(strings.Fields(val), "")
		case strings.HasPrefix(k, "_"):
			extra = true
		default:
			return "", false
		}
	}
	if !sameAddress(addr, t.from) || !publicKey(keydata, t.from) {
		return "", false
	}
	if !extra {
		return strings.TrimSpace(v), true
	}
	out := "addr=" + addr + "; "
	if prefer != "" {
		out += "prefer-encrypt=" + prefer + "; "
	}
	return out + "keydata=" + keydata, true
}

// publicKey reports whether b64 is the base64 of one transferable OpenPGP
// public key (RFC 9580 10.1) of at most MaxAutocryptKey bytes, made of key,
// subkey, signature and user ID packets only, every user ID "<addr>" as
// Delta Chat writes it, and no signature notations but knownNotations: no
// photo, no name, no other text.
func publicKey(b64, addr string) bool {
	if base64.StdEncoding.DecodedLen(len(b64)) > MaxAutocryptKey+2 {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) == 0 || len(raw) > MaxAutocryptKey {
		return false
	}
	// The packet tags, read here from the raw headers: go-crypto's reader
	// skips packets it does not know, and so would let them through.
	ok := eachPacket(raw, func(tag byte, body []byte) bool {
		switch tag {
		case 6, 14, 2: // public key, public subkey, signature
			return true
		case 13: // user ID
			return strings.EqualFold(string(body), "<"+addr+">")
		}
		return false
	})
	if !ok {
		return false
	}
	r := packet.NewReader(bytes.NewReader(raw))
	for {
		p, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false
		}
		if sig, isSig := p.(*packet.Signature); isSig && !knownNotations(sig.Notations) {
			return false
		}
	}
	keys, err := openpgp.ReadKeyRing(bytes.NewReader(raw))
	return err == nil && len(keys) == 1 && keys[0].PrivateKey == nil
}

// maxRelays bounds the addresses in a relays notation; Delta Chat lists
// up to five.
const maxRelays = 10

// knownNotations reports whether every signature notation is one clients
// write: Delta Chat's list of the relays a key's owner reads mail at, or
// the random salt OpenPGP.js and go-crypto add. gpg shows other notations
// to people, so they could carry text.
func knownNotations(ns []*packet.Notation) bool {
	for _, n := range ns {
		switch n.Name {
		case "relays@chatmail.at":
			addrs := strings.Split(string(n.Value), ",")
			if !n.IsHumanReadable || len(addrs) > maxRelays {
				return false
			}
			for _, a := range addrs {
				if !boundedAddress(normalize(a)) {
					return false
				}
			}
		case "salt@notations.openpgpjs.org":
			if n.IsHumanReadable || len(n.Value) > 32 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// eachPacket calls fn with the tag and body of each OpenPGP packet in b
// (RFC 9580 4.2; no partial lengths, which no key packet may have) and
// reports whether b is whole packets only and fn accepted them all.
func eachPacket(b []byte, fn func(tag byte, body []byte) bool) bool {
	for len(b) > 0 {
		h := b[0]
		if h&0x80 == 0 {
			return false
		}
		var tag byte
		var n, hl int
		if h&0x40 == 0 { // legacy format
			tag = h >> 2 & 0x0f
			switch h & 3 {
			case 0:
				hl = 2
			case 1:
				hl = 3
			case 2:
				hl = 5
			default:
				return false
			}
			if len(b) < hl {
				return false
			}
			for _, c := range b[1:hl] {
				n = n<<8 | int(c)
			}
		} else {
			tag = h & 0x3f
			if len(b) < 2 {
				return false
			}
			switch o := int(b[1]); {
			case o < 192:
				n, hl = o, 2
			case o < 224:
				if len(b) < 3 {
					return false
				}
				n, hl = (o-192)<<8+int(b[2])+192, 3
			case o == 255:
				if len(b) < 6 {
					return false
				}
				n, hl = int(b[2])<<24|int(b[3])<<16|int(b[4])<<8|int(b[5]), 6
			default:
				return false // partial length
			}
		}
		if n < 0 || len(b)-hl < n || !fn(tag, b[hl:hl+n]) {
			return false
		}
		b = b[hl+n:]
	}
	return true
}
