// Package dkimstream signs and verifies DKIM (RFC 6376) while a message
// streams through a milter, without holding more than a small message:
// signing hashes as it goes; go-msgauth verifies from an io.Reader, so a
// large message is verified on a goroutine at the far end of an io.Pipe
// that the milter writes header and body chunks into.
package dkimstream

import (
	"bytes"
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
// one later breaks the signature (RFC 6376 8.15). It holds every field on
// mailpolicy's header allowlist (TestOversignAllowlist checks it), and
// Reply-To, which the policy removes: such a field added after signing,
// where there was none (an Auto-Submitted, a Secure-Join token) or as a
// copy above the signed one, would otherwise pass verification and be
// delivered.
var oversign = []string{"From", "To", "Cc", "Subject", "Date", "Reply-To", "Message-ID",
	"In-Reply-To", "References", "MIME-Version", "Content-Type", "Content-Transfer-Encoding",
	"Autocrypt", "Auto-Submitted", "Chat-Version", "Chat-Is-Post-Message", "Secure-Join",
	"Secure-Join-Invitenumber", "Secure-Join-Auth", "Secure-Join-Group", "Secure-Join-Fingerprint"}

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

// heldLimit is the size up to which a message is held and verified at the
// end, on the caller's goroutine; a larger one streams to a verifier
// goroutine instead, so memory stays bounded whatever the size. Most chat
// messages are smaller, and spare the goroutine and a hand-off per write.
const heldLimit = 64 << 10

// Verifying is a verification in progress.
type Verifying struct {
	lookup  Lookup
	held    []byte // the message so far, while it fits in heldLimit
	aborted bool

	// Streaming, once past heldLimit:
	pw     *io.PipeWriter
	ctx    context.Context // for the verifier's key lookups
	cancel context.CancelFunc
	done   chan struct{}
	res    []*dkim.Verification
	err    error

	signer string // the d= of the aligned signature that passed
}

// Verify starts verifying a message; the caller writes the header section
// and the body, then calls Result or Abort. lookup resolves key records.
func Verify(lookup Lookup) *Verifying {
	return &Verifying{lookup: lookup}
}

// Write feeds message bytes.
func (v *Verifying) Write(p []byte) (int, error) {
	if v.aborted {
		return 0, errAborted
	}
	if v.pw == nil {
		if len(v.held)+len(p) <= heldLimit {
			if v.held == nil {
				v.held = make([]byte, 0, min(heldLimit, max(8<<10, 2*len(p))))
			}
			v.held = append(v.held, p...)
			return len(p), nil
		}
		v.stream()
		held := v.held
		v.held = nil
		if _, err := v.pw.Write(held); err != nil {
			return 0, err
		}
	}
	return v.pw.Write(p)
}

// stream starts the verifier goroutine at the far end of a pipe.
func (v *Verifying) stream() {
	pr, pw := io.Pipe()
	v.pw, v.done = pw, make(chan struct{})
	v.ctx, v.cancel = context.WithCancel(context.Background())
	go func() {
		defer close(v.done)
		v.res, v.err = verify(v.ctx, v.lookup, pr)
		// Verify may return before reading the body; drain it so that the
		// writer never blocks.
		_, _ = io.Copy(io.Discard, pr)
	}()
}

func verify(ctx context.Context, lookup Lookup, r io.Reader) ([]*dkim.Verification, error) {
	return dkim.VerifyWithOptions(r, &dkim.VerifyOptions{
		LookupTXT:        func(name string) ([]string, error) { return lookup.LookupTXT(ctx, name) },
		MaxVerifications: maxSignatures,
	})
}

// Result ends the message and classifies its signatures for fromDomain.
// Key lookups give up when ctx ends.
func (v *Verifying) Result(ctx context.Context, fromDomain string) (Outcome, error) {
	var res []*dkim.Verification
	var err error
	if v.pw == nil {
		res, err = verify(ctx, v.lookup, bytes.NewReader(v.held))
		v.held = nil
	} else {
		defer v.cancel()
		stop := context.AfterFunc(ctx, v.cancel)
		defer stop()
		if err := v.pw.Close(); err != nil {
			return TempFail, err
		}
		select {
		case <-v.done:
		case <-ctx.Done():
			return TempFail, ctx.Err()
		}
		res, err = v.res, v.err
	}
	if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
		return TempFail, fmt.Errorf("dkim verify: %w", err)
	}
	out, signer := classify(res, fromDomain)
	v.signer = signer
	return out, nil
}

// Signer is, after Result said Pass, the domain (d=) of the aligned
// signature that passed, lower-case: the From domain or a parent of it.
func (v *Verifying) Signer() string { return v.signer }

// Abort ends an unfinished verification.
func (v *Verifying) Abort() {
	v.aborted, v.held = true, nil
	if v.pw != nil {
		v.cancel()
		v.pw.CloseWithError(errAborted)
	}
}

var errAborted = errors.New("message aborted")

func classify(res []*dkim.Verification, fromDomain string) (Outcome, string) {
	if len(res) == 0 {
		return Unsigned, ""
	}
	out := Invalid
	for _, r := range res {
		switch {
		case r.Err == nil && Aligned(r.Domain, fromDomain):
			return Pass, strings.TrimSuffix(strings.ToLower(r.Domain), ".")
		case r.Err == nil:
			if out == Invalid {
				out = Unaligned
			}
		case dkim.IsTempFail(r.Err):
			out = TempFail
		}
	}
	return out, ""
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
