// Command fixturegen writes the .eml fixtures under testdata/ that the
// tests of the judge and the policy read. The keys are made fresh on every
// run, so the output differs each time; run it only to add or change
// fixtures and commit the result (go generate ./pgpmime).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	openpgpv2 "github.com/ProtonMail/go-crypto/openpgp/v2"
)

const (
	alice = "alice@chat.example"
	bob   = "bob@chat.example"
	carol = "carol@other.example"
)

func main() {
	out := flag.String("out", "testdata", "directory to write the fixtures to")
	flag.Parse()
	if err := run(*out); err != nil {
		log.Fatal(err)
	}
}

func run(dir string) error {
	files, err := fixtures()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// payloads are OpenPGP packet streams, unarmored.
type payloads struct {
	v4, v6, skesk4, skesk6, large []byte
	literal, compressed, signed   []byte
}

func makePayloads() (*payloads, error) {
	var p payloads
	plain := []byte("Hello Bob, this is secret.\r\n")

	v4cfg := &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA}
	k1, err := openpgp.NewEntity("a", "", alice, v4cfg)
	if err != nil {
		return nil, err
	}
	k2, err := openpgp.NewEntity("b", "", bob, v4cfg)
	if err != nil {
		return nil, err
	}
	if p.v4, err = seal(func(w io.Writer) (io.WriteCloser, error) {
		return openpgp.Encrypt(w, []*openpgp.Entity{k1, k2}, nil, nil, nil)
	}, plain); err != nil {
		return nil, fmt.Errorf("v4: %w", err)
	}

	v6cfg := &packet.Config{V6Keys: true, Algorithm: packet.PubKeyAlgoEd25519, AEADConfig: &packet.AEADConfig{}}
	k6, err := openpgpv2.NewEntity("b", "", bob, v6cfg)
	if err != nil {
		return nil, err
	}
	enc6 := func(w io.Writer) (io.WriteCloser, error) {
		return openpgpv2.Encrypt(w, []*openpgpv2.Entity{k6}, nil, nil, nil, v6cfg)
	}
	if p.v6, err = seal(enc6, plain); err != nil {
		return nil, fmt.Errorf("v6: %w", err)
	}
	big := make([]byte, 300<<10)
	if _, err := rand.Read(big); err != nil {
		return nil, err
	}
	if p.large, err = seal(enc6, big); err != nil {
		return nil, fmt.Errorf("large: %w", err)
	}

	pass := []byte("securejoin/0123456789ABCDEF/authtoken")
	if p.skesk4, err = seal(func(w io.Writer) (io.WriteCloser, error) {
		return openpgp.SymmetricallyEncrypt(w, pass, nil, nil)
	}, plain); err != nil {
		return nil, fmt.Errorf("skesk4: %w", err)
	}
	if p.skesk6, err = seal(func(w io.Writer) (io.WriteCloser, error) {
		return openpgpv2.SymmetricallyEncrypt(w, pass, nil, &packet.Config{AEADConfig: &packet.AEADConfig{}})
	}, plain); err != nil {
		return nil, fmt.Errorf("skesk6: %w", err)
	}

	var lit bytes.Buffer
	lw, err := packet.SerializeLiteral(nopCloser{&lit}, true, "", 0)
	if err != nil {
		return nil, err
	}
	if _, err := lw.Write(plain); err != nil {
		return nil, err
	}
	if err := lw.Close(); err != nil {
		return nil, err
	}
	p.literal = lit.Bytes()

	var comp bytes.Buffer
	cw, err := packet.SerializeCompressed(nopCloser{&comp}, packet.CompressionZLIB, nil)
	if err != nil {
		return nil, err
	}
	if _, err := cw.Write(p.literal); err != nil {
		return nil, err
	}
	if err := cw.Close(); err != nil {
		return nil, err
	}
	p.compressed = comp.Bytes()

	if p.signed, err = seal(func(w io.Writer) (io.WriteCloser, error) {
		return openpgp.Sign(w, k1, nil, nil)
	}, plain); err != nil {
		return nil, fmt.Errorf("signed: %w", err)
	}
	return &p, nil
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

func seal(open func(io.Writer) (io.WriteCloser, error), plain []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := open(&buf)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(plain); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// pkt is one packet: tag and whole body.
type pkt struct {
	tag  byte
	body []byte
}

// split parses a packet stream, joining partial bodies.
func split(b []byte) ([]pkt, error) {
	var out []pkt
	for len(b) > 0 {
		h := b[0]
		b = b[1:]
		if h&0x80 == 0 {
			return nil, fmt.Errorf("bad header %#x", h)
		}
		var p pkt
		if h&0x40 == 0 {
			p.tag = h >> 2 & 0xf
			n := []int{1, 2, 4}[h&3]
			l := 0
			for _, c := range b[:n] {
				l = l<<8 | int(c)
			}
			p.body, b = b[n:n+l], b[n+l:]
			out = append(out, p)
			continue
		}
		p.tag = h & 0x3f
		for {
			o := b[0]
			var l, n int
			partial := false
			switch {
			case o < 192:
				l, n = int(o), 1
			case o < 224:
				l, n = (int(o)-192)<<8+int(b[1])+192, 2
			case o < 255:
				l, n, partial = 1<<(o&0x1f), 1, true
			default:
				l, n = int(b[1])<<24|int(b[2])<<16|int(b[3])<<8|int(b[4]), 5
			}
			p.body = append(p.body, b[n:n+l]...)
			b = b[n+l:]
			if !partial {
				break
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// definite writes a packet with a new-format definite length.
func definite(p pkt) []byte {
	out := []byte{0xc0 | p.tag}
	l := len(p.body)
	switch {
	case l < 192:
		out = append(out, byte(l))
	case l < 8384:
		l -= 192
		out = append(out, byte(l>>8)+192, byte(l))
	default:
		out = append(out, 255, byte(l>>24), byte(l>>16), byte(l>>8), byte(l))
	}
	return append(out, p.body...)
}

// legacy writes a packet with a legacy-format header and a 2-octet length.
func legacy(p pkt) []byte {
	l := len(p.body)
	return append([]byte{0x80 | p.tag<<2 | 1, byte(l >> 8), byte(l)}, p.body...)
}

func join(ps ...[]byte) []byte { return bytes.Join(ps, nil) }

type armorOpt struct {
	headers []string
	crc     string // "" valid, "none", or a literal checksum line
	lf      bool
}

// armor writes b as an ASCII-armored PGP MESSAGE with 64-column lines.
func armor(b []byte, o armorOpt) string {
	var s strings.Builder
	s.WriteString("-----BEGIN PGP MESSAGE-----\r\n")
	for _, h := range o.headers {
		s.WriteString(h + "\r\n")
	}
	s.WriteString("\r\n")
	enc := base64.StdEncoding.EncodeToString(b)
	for len(enc) > 64 {
		s.WriteString(enc[:64] + "\r\n")
		enc = enc[64:]
	}
	s.WriteString(enc + "\r\n")
	switch o.crc {
	case "":
		c := crc24(b)
		s.WriteString("=" + base64.StdEncoding.EncodeToString([]byte{byte(c >> 16), byte(c >> 8), byte(c)}) + "\r\n")
	case "none":
	default:
		s.WriteString(o.crc + "\r\n")
	}
	s.WriteString("-----END PGP MESSAGE-----\r\n")
	if o.lf {
		return strings.ReplaceAll(s.String(), "\r\n", "\n")
	}
	return s.String()
}

func crc24(b []byte) uint32 {
	crc := uint32(0xb704ce)
	for _, c := range b {
		crc ^= uint32(c) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	return crc & 0xffffff
}

const boundary = "AsXr7bq0ZVm2Lw9c"

func header(from, to, extra, contentType string) string {
	h := "From: <" + from + ">\r\n" +
		"To: <" + to + ">\r\n" +
		"Subject: [...]\r\n" +
		"Date: Thu, 26 Nov 2026 12:01:03 +0000\r\n" +
		"Message-ID: <fixture-" + strings.ReplaceAll(contentType[:8], "/", "") + "@localhost>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Chat-Version: 1.0\r\n" + extra +
		"Content-Type: " + contentType + "\r\n\r\n"
	return h
}

const encType = "multipart/encrypted; protocol=\"application/pgp-encrypted\";\r\n\tboundary=\"" + boundary + "\""

const versionPart = "--" + boundary + "\r\n" +
	"Content-Description: PGP/MIME version identification\r\n" +
	"Content-Type: application/pgp-encrypted\r\n\r\n" +
	"Version: 1\r\n\r\n"

func dataPart(armored string) string {
	return "--" + boundary + "\r\n" +
		"Content-Description: OpenPGP encrypted message\r\n" +
		"Content-Disposition: inline; filename=\"encrypted.asc\";\r\n" +
		"Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n" +
		armored + "\r\n"
}

const closeDelim = "--" + boundary + "--\r\n"

// pgpMIME builds a standard Delta Chat shaped encrypted message.
func pgpMIME(armored string) string {
	return header(alice, bob, "", encType) + "\r\n" + versionPart + dataPart(armored) + closeDelim
}

func fixtures() (map[string][]byte, error) {
	p, err := makePayloads()
	if err != nil {
		return nil, err
	}
	v4, err := split(p.v4)
	if err != nil {
		return nil, err
	}
	v6, err := split(p.v6)
	if err != nil {
		return nil, err
	}
	sed := pkt{tag: 9, body: v4[len(v4)-1].body[1:]} // SEIPD body without its version octet
	m := map[string]string{
		// Encrypted: must pass.
		"enc-v4.eml":             pgpMIME(armor(p.v4, armorOpt{})),
		"enc-v6.eml":             pgpMIME(armor(p.v6, armorOpt{})),
		"enc-skesk-v4.eml":       pgpMIME(armor(p.skesk4, armorOpt{})),
		"enc-skesk-v6.eml":       pgpMIME(armor(p.skesk6, armorOpt{})),
		"enc-large-v6.eml":       pgpMIME(armor(p.large, armorOpt{})),
		"enc-definite.eml":       pgpMIME(armor(join(definite(v4[0]), definite(v4[1]), definite(v4[2])), armorOpt{})),
		"enc-legacy-header.eml":  pgpMIME(armor(join(legacy(v4[0]), legacy(v4[1]), definite(v4[2])), armorOpt{})),
		"enc-no-checksum.eml":    pgpMIME(armor(p.v6, armorOpt{crc: "none"})),
		"enc-wrong-checksum.eml": pgpMIME(armor(p.v6, armorOpt{crc: "=AAAA"})),
		"enc-armor-headers.eml":  pgpMIME(armor(p.v4, armorOpt{headers: []string{"Version: ProtonMail"}})),
		"neg-armor-comment.eml":  pgpMIME(armor(p.v4, armorOpt{headers: []string{"Version: ProtonMail", "Comment: https://gopenpgp.org"}})),
		"enc-preamble.eml": header(alice, bob, "", encType) +
			"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n" +
			versionPart + dataPart(armor(p.v4, armorOpt{})) + closeDelim,
		"enc-lf.eml": strings.ReplaceAll(pgpMIME(armor(p.v4, armorOpt{})), "\r\n", "\n"),

		// Not encrypted.
		"neg-literal.eml":              pgpMIME(armor(p.literal, armorOpt{})),
		"neg-compressed.eml":           pgpMIME(armor(p.compressed, armorOpt{})),
		"neg-signed.eml":               pgpMIME(armor(p.signed, armorOpt{})),
		"neg-sed.eml":                  pgpMIME(armor(join(definite(v4[0]), definite(sed)), armorOpt{})),
		"neg-no-esk.eml":               pgpMIME(armor(definite(v4[2]), armorOpt{})),
		"neg-mixed-versions.eml":       pgpMIME(armor(join(definite(v6[0]), definite(v4[2])), armorOpt{})),
		"neg-trailing-packet.eml":      pgpMIME(armor(join(p.v4, p.literal), armorOpt{})),
		"neg-truncated.eml":            pgpMIME(armor(p.v4[:len(p.v4)-10], armorOpt{})),
		"neg-bad-checksum.eml":         pgpMIME(armor(p.v4, armorOpt{crc: "=AAA"})),
		"neg-unknown-armor-header.eml": pgpMIME(armor(p.v4, armorOpt{headers: []string{"Subject: hello in clear"}})),
		"neg-garbage-after-end.eml":    pgpMIME(armor(p.v4, armorOpt{}) + "Buy cheap watches!\r\n"),
		"neg-two-blocks.eml":           pgpMIME(armor(p.v4, armorOpt{}) + armor(p.v6, armorOpt{})),
		"neg-text-before-armor.eml":    pgpMIME("Hi Bob, see below.\r\n" + armor(p.v4, armorOpt{})),
		"neg-long-preamble.eml": header(alice, bob, "", encType) +
			strings.Repeat("This cleartext preamble carries a whole message past a lax filter.\r\n", 5) +
			versionPart + dataPart(armor(p.v4, armorOpt{})) + closeDelim,
		"neg-long-epilogue.eml": pgpMIME(armor(p.v4, armorOpt{})) +
			strings.Repeat("This cleartext epilogue carries a whole message past a lax filter.\r\n", 5),
		"neg-version-only.eml": header(alice, bob, "", encType) + versionPart + closeDelim,
		"neg-extra-part.eml": header(alice, bob, "", encType) + versionPart + dataPart(armor(p.v4, armorOpt{})) +
			"--" + boundary + "\r\nContent-Type: text/plain\r\n\r\nHello in clear\r\n" + closeDelim,
		"neg-wrong-order.eml": header(alice, bob, "", encType) + dataPart(armor(p.v4, armorOpt{})) + versionPart + closeDelim,
		"neg-nested.eml": header(alice, bob, "", "multipart/mixed; boundary=\"outer\"") +
			"--outer\r\nContent-Type: " + encType + "\r\n\r\n" + versionPart + dataPart(armor(p.v4, armorOpt{})) + closeDelim +
			"--outer--\r\n",
		"neg-no-protocol.eml": header(alice, bob, "", "multipart/encrypted; boundary=\""+boundary+"\"") +
			versionPart + dataPart(armor(p.v4, armorOpt{})) + closeDelim,
		"neg-quoted-printable.eml": header(alice, bob, "", encType) + versionPart +
			"--" + boundary + "\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
			strings.ReplaceAll(armor(p.v4, armorOpt{}), "=", "=3D") + "\r\n" + closeDelim,
		"neg-unterminated.eml": header(alice, bob, "", encType) + versionPart + dataPart(armor(p.v4, armorOpt{})),
		"neg-fake-armor.eml": header(alice, bob, "", "text/plain; charset=utf-8") +
			"-----BEGIN PGP MESSAGE-----\r\nMeow!\r\n-----END PGP MESSAGE-----\r\n",
		"neg-plain.eml": header(alice, bob, "Autocrypt: addr="+alice+"; prefer-encrypt=mutual; keydata=xjMEZ\r\n",
			"text/plain; charset=utf-8; format=flowed; delsp=no") + "Hello in clear\r\n",

		// Cleartext exceptions and their fakes.
		"securejoin-vc.eml":       secureJoin("vc-request", "Secure-Join: vc-request"),
		"securejoin-vg.eml":       secureJoin("vg-request", "Secure-Join: vg-request"),
		"securejoin-fake.eml":     secureJoin("vc-request", "Buy cheap watches!"),
		"securejoin-mismatch.eml": secureJoin("vc-request", "Secure-Join: vg-request"),
		"securejoin-pubkey.eml":   secureJoin("vc-request-pubkey", "Secure-Join: vc-request-pubkey"),
		"securejoin-two-parts.eml": header(alice, carol, "Secure-Join: vc-request\r\nSecure-Join-Invitenumber: INVITEnumber123\r\n",
			"multipart/mixed; boundary=\"sj\"") +
			"--sj\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n\r\nSecure-Join: vc-request\r\n" +
			"--sj\r\nContent-Type: text/plain\r\n\r\nBuy cheap watches!\r\n--sj--\r\n",
		"asm.eml":               setupMessage(),
		"bounce.eml":            bounce("MAILER-DAEMON@other.example", "delivery-status", "auto-replied"),
		"bounce-mdn.eml":        bounce("MAILER-DAEMON@other.example", "disposition-notification", "auto-replied"),
		"bounce-not-auto.eml":   bounce("MAILER-DAEMON@other.example", "delivery-status", "no"),
		"bounce-not-daemon.eml": bounce(carol, "delivery-status", "auto-replied"),
		"mdn.eml": header(alice, bob, "Auto-Submitted: auto-replied\r\n",
			"multipart/report; report-type=disposition-notification; boundary=\"mdn\"") +
			"--mdn\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe message you sent was displayed.\r\n" +
			"--mdn\r\nContent-Type: message/disposition-notification\r\n\r\n" +
			"Reporting-UA: Delta Chat\r\nOriginal-Message-ID: <x@localhost>\r\nDisposition: manual-action/MDN-sent-automatically; displayed\r\n" +
			"--mdn--\r\n",
	}
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out, nil
}

// secureJoin builds a legacy Secure-Join request the way Delta Chat 2.62 sends it.
func secureJoin(step, body string) string {
	return "From: <" + alice + ">\r\n" +
		"Message-ID: <0f060a63-7964-4c8c-b514-b8b53360307f@localhost>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Autocrypt: addr=" + alice + "; prefer-encrypt=mutual; keydata=xjMEawlfGx\r\n" +
		"Content-Type: multipart/mixed;\r\n\tboundary=\"18ebe103f3c65e49_12bf081100660c6b\"\r\n" +
		"Date: Fri, 27 Nov 2026 10:44:43 +0000\r\n" +
		"To: <" + carol + ">\r\n" +
		"Subject: Message from " + alice + "\r\n" +
		"Chat-Version: 1.0\r\n" +
		"Secure-Join: " + step + "\r\n" +
		"Secure-Join-Invitenumber: INVITEnumber123\r\n" +
		"\r\n\r\n" +
		"--18ebe103f3c65e49_12bf081100660c6b\r\n" +
		"Content-Type: text/plain; charset=\"utf-8\"\r\n" +
		"Content-Transfer-Encoding: 7bit\r\n\r\n" +
		body + "\r\n" +
		"--18ebe103f3c65e49_12bf081100660c6b--\r\n"
}

func setupMessage() string {
	return "From: <" + alice + ">\r\n" +
		"To: <" + alice + ">\r\n" +
		"Autocrypt-Setup-Message: v1\r\n" +
		"Subject: Autocrypt Setup Message\r\n" +
		"Date: Tue, 22 Jan 2019 12:56:29 +0100\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"asm\"\r\n\r\n" +
		"--asm\r\nContent-Type: text/plain\r\n\r\nThis message contains your Autocrypt settings.\r\n" +
		"--asm\r\nContent-Type: application/autocrypt-setup\r\n" +
		"Content-Disposition: attachment; filename=\"autocrypt-setup-message.html\"\r\n\r\n" +
		"<html><body><pre>\r\n-----BEGIN PGP MESSAGE-----\r\nPassphrase-Format: numeric9x4\r\n\r\n" +
		"jA0EBwMCFAxADoCdzeX/0ukBlqI5+pfpKb751qd/7nLNbkpy3gVcaf1QwRPZYt40\r\n" +
		"-----END PGP MESSAGE-----\r\n</pre></body></html>\r\n--asm--\r\n"
}

func bounce(from, reportType, autoSubmitted string) string {
	return "Date: Fri, 27 Nov 2026 10:44:43 +0000\r\n" +
		"From: Mail Delivery System <" + from + ">\r\n" +
		"Subject: Undelivered Mail Returned to Sender\r\n" +
		"To: <" + bob + ">\r\n" +
		"Auto-Submitted: " + autoSubmitted + "\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/report; report-type=" + reportType + ";\r\n\tboundary=\"dsn\"\r\n\r\n" +
		"--dsn\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" +
		"This is the mail system. Your message could not be delivered.\r\n" +
		"--dsn\r\nContent-Type: message/delivery-status\r\n\r\n" +
		"Reporting-MTA: dns; mx.other.example\r\n\r\nFinal-Recipient: rfc822; nobody@other.example\r\n" +
		"Action: failed\r\nStatus: 5.1.1\r\n" +
		"--dsn--\r\n"
}
