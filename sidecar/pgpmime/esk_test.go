package pgpmime

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// packet returns a new-format packet with the given tag and body.
func packet(tag byte, body []byte) []byte {
	p := []byte{0xc0 | tag}
	switch n := len(body); {
	case n < 192:
		p = append(p, byte(n))
	case n < 8384:
		p = append(p, byte((n-192)>>8)+192, byte(n-192))
	default:
		p = append(p, 255, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(p, body...)
}

var (
	// SKESK v4, AES-256, iterated and salted S2K, no encrypted session key.
	skesk4 = packet(tagSKESK, append([]byte{4, 9, 3, 8}, "saltsalt\x60"...))
	// PKESK v3 to an X25519 key: key ID, ephemeral key, 41-byte wrapped key.
	pkesk3 = packet(tagPKESK, append(append([]byte{3, 1, 2, 3, 4, 5, 6, 7, 8, 25}, bytes.Repeat([]byte{7}, 32)...),
		append([]byte{41}, bytes.Repeat([]byte{9}, 41)...)...))
	seipd1 = packet(tagSEIPD, []byte{1, 0xaa, 0xbb})
)

func TestSessionKeyPackets(t *testing.T) {
	cat := func(ps ...[]byte) []byte { return bytes.Join(ps, nil) }
	text := []byte(strings.Repeat("Buy cheap watches! ", 1100)) // about 20 KB
	cases := []struct {
		name string
		data []byte
		want error
	}{
		{"SKESK v4", cat(skesk4, seipd1), nil},
		{"PKESK v3 X25519", cat(pkesk3, seipd1), nil},
		{"both", cat(pkesk3, skesk4, seipd1), nil},
		{"PKESK of text", cat(packet(tagPKESK, append([]byte{3}, text...)), seipd1), ErrESK},
		{"PKESK v3 with a byte to spare", cat(packet(tagPKESK, append(pkesk3[2:], 'x')), seipd1), ErrESK},
		{"PKESK v3 cut short", cat(packet(tagPKESK, pkesk3[2:len(pkesk3)-1]), seipd1), ErrESK},
		{"PKESK v3 unknown algorithm", cat(packet(tagPKESK, append([]byte{3, 1, 2, 3, 4, 5, 6, 7, 8, 99}, 'x')), seipd1), ErrESK},
		{"SKESK v4 with text after the S2K", cat(packet(tagSKESK, append(skesk4[2:], "hello, how are you doing today?!!!"...)), seipd1), ErrESK},
		{"SKESK v4 plaintext algorithm", cat(packet(tagSKESK, []byte{4, 0, 0, 8}), seipd1), ErrESK},
		{"as many SKESKs as allowed", cat(bytes.Repeat(skesk4, MaxESKs), seipd1), nil},
		{"one SKESK too many", cat(bytes.Repeat(skesk4, MaxESKs+1), seipd1), ErrESKCount},
	}
	for _, c := range cases {
		// Whole, and byte by byte: a body split across feeds must be
		// collected the same.
		if err := CheckPackets(c.data); !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
		var w walker
		var err error
		for i := 0; i < len(c.data) && err == nil; i++ {
			err = w.feed(c.data[i : i+1])
		}
		if err == nil {
			err = w.finish()
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s byte by byte: got %v, want %v", c.name, err, c.want)
		}
	}
}
