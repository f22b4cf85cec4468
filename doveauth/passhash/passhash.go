// Package passhash makes password hashes in schemes that Dovecot verifies
// itself, with Dovecot's {SCHEME} prefix, so Dovecot never needs doveauth to
// check a password and the store never holds one.
package passhash

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"runtime"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Schemes.
const (
	SHA512Crypt = "SHA512-CRYPT"
	Argon2ID    = "ARGON2ID"
)

// Argon2id parameters: libsodium's "interactive" limits, which Dovecot's
// libsodium-based verifier accepts.
const (
	argonTime    = 2
	argonMemory  = 64 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
)

// argonSlots bounds concurrent Argon2id hashes to one per CPU.
var argonSlots = make(chan struct{}, runtime.NumCPU())

// Hash hashes password in scheme.
func Hash(scheme, password string) (string, error) {
	switch scheme {
	case SHA512Crypt:
		salt, err := randomSalt(16)
		if err != nil {
			return "", err
		}
		return "{SHA512-CRYPT}" + SHA512CryptWithSalt(password, salt, 0), nil
	case Argon2ID:
		// Each hash takes 64 MiB: a burst of first logins must not take
		// the daemon's memory with it.
		argonSlots <- struct{}{}
		defer func() { <-argonSlots }()
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return "", err
		}
		key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
		enc := base64.RawStdEncoding
		return fmt.Sprintf("{ARGON2ID}$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
			argon2.Version, argonMemory, argonTime, argonThreads, enc.EncodeToString(salt), enc.EncodeToString(key)), nil
	}
	return "", fmt.Errorf("unknown password scheme %q", scheme)
}

// Scheme returns the {SCHEME} prefix of a stored hash, without braces.
func Scheme(hash string) string {
	if !strings.HasPrefix(hash, "{") {
		return ""
	}
	end := strings.IndexByte(hash, '}')
	if end < 0 {
		return ""
	}
	return hash[1:end]
}

func randomSalt(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	s := make([]byte, n)
	for i, c := range b {
		s[i] = cryptAlphabet[c&0x3f]
	}
	return string(s), nil
}
