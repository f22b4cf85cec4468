package server

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/emersion/go-milter"
	"github.com/emersion/go-msgauth/dkim"
)

// BenchmarkIncoming is what Postfix's MX asks of the milter per message
// when each message comes in its own SMTP session: a new milter
// connection, one recipient, a DKIM-signed (RSA 2048) encrypted message
// (Delta Chat's text message, 2.8 KB, and a photo-sized one, 420 KB),
// verified with the key from a keys directory. The client side (go-milter's,
// standing in for Postfix) runs in the same process.
func BenchmarkIncoming(b *testing.B) {
	for _, name := range []string{"enc-dc-2.62-text.eml", "enc-large-v6.eml"} {
		b.Run(name, func(b *testing.B) { benchIncoming(b, name) })
	}
}

func benchIncoming(b *testing.B, fixtureName string) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	keys := b.TempDir()
	record := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(pub)
	if err := os.WriteFile(filepath.Join(keys, "sel._domainkey.other.example"), []byte(record), 0o644); err != nil {
		b.Fatal(err)
	}
	msg := bytes.ReplaceAll(fixture(b, fixtureName), []byte("alice@chat.example"), []byte("carol@other.example"))
	var signed bytes.Buffer
	if err := dkim.Sign(&signed, bytes.NewReader(msg), &dkim.SignOptions{Domain: "other.example", Selector: "sel", Signer: key}); err != nil {
		b.Fatal(err)
	}
	h := start(b, func(c *Config) { c.VerifyDKIM, c.DKIMKeysDir = true, keys })
	b.SetBytes(int64(signed.Len()))
	b.ReportAllocs()
	for b.Loop() {
		s := h.session(b)
		begin(b, s, "", "carol@other.example", "bob@chat.example")
		if _, act := message(b, s, signed.Bytes()); act.Code != milter.ActAccept {
			b.Fatalf("not accepted: %+v", act)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
