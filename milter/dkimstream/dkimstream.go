// Package dkimstream signs and verifies DKIM (RFC 6376) while a message
// streams through a milter, without holding the message: go-msgauth reads
// from an io.Reader, so each operation runs on its own goroutine at the far
// end of an io.Pipe that the milter writes header and body chunks into.
package dkimstream

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// maxSignatures bounds the signatures verified per message, against CPU and
// DNS abuse; real mail carries one to three.
const maxSignatures = 5

// SignKey is a domain's signing key.
type SignKey struct {
	Domain   string
	Selector string
	Signer   crypto.Signer
}

// LoadSignKey reads a PEM private key (PKCS#8, or PKCS#1 RSA) from path.
func LoadSignKey(domain, selector, path string) (*SignKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var key any
	if key, err = x509.ParsePKCS8PrivateKey(block.Bytes); err != nil {
		if key, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			return nil, fmt.Errorf("%s: not a PKCS#8 or PKCS#1 private key", path)
		}
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: unsupported key type %T", path, key)
	}
	// Let go-msgauth reject key types it cannot use now, not per message.
	if _, err := dkim.NewSigner(&dkim.SignOptions{Domain: domain, Selector: selector, Signer: s}); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &SignKey{Domain: domain, Selector: selector, Signer: s}, nil
}

// oversign lists fields signed once more than they occur, so that adding
// one later breaks the signature (RFC 6376 8.15).
var oversign = []string{"From", "To", "Cc", "Subject", "Date", "Reply-To", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Autocrypt", "Chat-Version", "Secure-Join"}

// Signing is a signature in progress.
type Signing struct {
	s      *dkim.Signer
	closed bool
}

// Sign starts signing a message whose header fields have the given names,
// in order; the caller then writes the header section and the body.
func Sign(key *SignKey, names []string) (*Signing, error) {
	keys := append(append([]string(nil), names...), oversign...)
	s, err := dkim.NewSigner(&dkim.SignOptions{
		Domain:                 key.Domain,
		Selector:               key.Selector,
		Signer:                 key.Signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             keys,
	})
	if err != nil {
		return nil, fmt.Errorf("dkim signer: %w", err)
	}
	return &Signing{s: s}, nil
}

// Write feeds message bytes.
func (g *Signing) Write(p []byte) (int, error) { return g.s.Write(p) }

// Finish completes the signature and returns the DKIM-Signature field value.
func (g *Signing) Finish() (string, error) {
	g.closed = true
	if err := g.s.Close(); err != nil {
		return "", fmt.Errorf("dkim sign: %w", err)
	}
	field := strings.TrimSuffix(g.s.Signature(), "\r\n")
	_, value, ok := strings.Cut(field, ":")
	if !ok {
		return "", errors.New("dkim sign: malformed signature field")
	}
	return strings.TrimLeft(value, " "), nil
}

// Abort releases the signer of an unfinished message.
func (g *Signing) Abort() {
	if !g.closed {
		g.closed = true
		_ = g.s.Close() // the error only says the message was incomplete
	}
}

// Outcome classifies the signatures of a message against its From domain.
type Outcome int

const (
	Pass      Outcome = iota // a valid signature whose d= aligns with From
	Unsigned                 // no DKIM-Signature field
	Invalid                  // signatures, none valid
	Unaligned                // valid signatures, none aligned
	TempFail                 // no pass, and a key lookup failed temporarily
)

func (o Outcome) String() string {
	return [...]string{"pass", "unsigned", "invalid", "unaligned", "tempfail"}[o]
}

// Verifying is a verification in progress.
type Verifying struct {
	pw   *io.PipeWriter
	done chan struct{}
	res  []*dkim.Verification
	err  error
}

// Verify starts verifying a message; the caller writes the header section
// and the body, then calls Result. lookup resolves key records.
func Verify(lookup Lookup) *Verifying {
	pr, pw := io.Pipe()
	v := &Verifying{pw: pw, done: make(chan struct{})}
	go func() {
		defer close(v.done)
		v.res, v.err = dkim.VerifyWithOptions(pr, &dkim.VerifyOptions{LookupTXT: lookup.LookupTXT, MaxVerifications: maxSignatures})
		// Verify may return before reading the body; drain it so that the
		// writer never blocks.
		_, _ = io.Copy(io.Discard, pr)
	}()
	return v
}

// Write feeds message bytes.
func (v *Verifying) Write(p []byte) (int, error) { return v.pw.Write(p) }

// Result ends the message and classifies its signatures for fromDomain.
func (v *Verifying) Result(ctx context.Context, fromDomain string) (Outcome, error) {
	if err := v.pw.Close(); err != nil {
		return TempFail, err
	}
	select {
	case <-v.done:
	case <-ctx.Done():
		return TempFail, ctx.Err()
	}
	if v.err != nil && !errors.Is(v.err, dkim.ErrTooManySignatures) {
		return TempFail, fmt.Errorf("dkim verify: %w", v.err)
	}
	return classify(v.res, fromDomain), nil
}

// Abort ends an unfinished verification.
func (v *Verifying) Abort() {
	v.pw.CloseWithError(errors.New("message aborted"))
}

func classify(res []*dkim.Verification, fromDomain string) Outcome {
	if len(res) == 0 {
		return Unsigned
	}
	out := Invalid
	for _, r := range res {
		switch {
		case r.Err == nil && Aligned(r.Domain, fromDomain):
			return Pass
		case r.Err == nil:
			if out == Invalid {
				out = Unaligned
			}
		case dkim.IsTempFail(r.Err):
			out = TempFail
		}
	}
	return out
}

// Aligned reports whether a signature by domain d vouches for a From
// address in domain from: d equals from or is a parent of it. A bare
// top-level d never aligns.
func Aligned(d, from string) bool {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	from = strings.TrimSuffix(strings.ToLower(from), ".")
	if !strings.Contains(d, ".") {
		return false
	}
	return from == d || strings.HasSuffix(from, "."+d)
}
