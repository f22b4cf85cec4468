package policy

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
// Delta Chat writes it: no photo, no name, no other text.
func publicKey(b64, addr string) bool {
	if base64.StdEncoding.DecodedLen(len(b64)) > MaxAutocryptKey+2 {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) == 0 || len(raw) > MaxAutocryptKey {
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
		switch p := p.(type) {
		case *packet.PublicKey, *packet.Signature:
		case *packet.UserId:
			if !strings.EqualFold(p.Id, "<"+addr+">") {
				return false
			}
		default:
			return false
		}
	}
	keys, err := openpgp.ReadKeyRing(bytes.NewReader(raw))
	if err != nil || len(keys) != 1 || keys[0].PrivateKey != nil {
		return false
	}
	return true
}
