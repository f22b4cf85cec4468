// Package turncred is the TURN credential scheme that metadata-proxy issues
// and turnd checks: the time-limited "TURN REST" long-term credentials
// (draft-uberti-behave-turn-rest-00) in the one form Delta Chat accepts.
//
// The username is the credential's expiry as a decimal Unix time and
// nothing else: Delta Chat reads the METADATA value host:port:username:
// password by splitting at colons, so a "expiry:user" username would end up
// in the password. The password is the standard base64 of HMAC-SHA1 of the
// username, keyed with the server's secret (the reference relay's and
// coturn's --use-auth-secret scheme, so coturn accepts the same
// credentials). The tie to an account is not in the credential: the store
// records which account each expiry second was issued to.
package turncred

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"time"

	"chatmail.dev/sidecar/keyfile"
)

// ReuseMargin is how long a credential must still be valid to be handed out
// again. Delta Chat asks for a new one when less than 12 hours are left
// (every IDLE cycle from then on), so a credential with less is replaced.
const ReuseMargin = 12 * time.Hour

// Password returns the password of username: base64std(HMAC-SHA1(secret,
// username)).
func Password(secret []byte, username string) string {
	m := hmac.New(sha1.New, secret)
	m.Write([]byte(username))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// Username returns the username of a credential that expires at expiry.
func Username(expiry int64) string { return strconv.FormatInt(expiry, 10) }

// maxUsernameLength bounds the digits of a username: Unix seconds have 10
// until 2286.
const maxUsernameLength = 11

// ErrUsername says a username is not a credential of this scheme.
var ErrUsername = errors.New("turn username is not a decimal expiry time")

// ParseUsername returns the expiry a username stands for. Only the form
// Username writes is accepted (digits, no sign, no leading zero), so that
// one credential has one username.
func ParseUsername(s string) (int64, error) {
	if s == "" || len(s) > maxUsernameLength || s[0] == '0' {
		return 0, ErrUsername
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrUsername
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, ErrUsername
	}
	return v, nil
}

// Value formats the METADATA value Delta Chat reads:
// host:port:username:password.
func Value(host string, port int, expiry int64, password string) string {
	return host + ":" + strconv.Itoa(port) + ":" + Username(expiry) + ":" + password
}

// LoadSecret reads the TURN secret file ([turn] secret_file), or makes it at
// first use (keyfile.Load): metadata-proxy and turnd read the same secret
// whichever starts first. The secret is the file's text without surrounding
// white space, as coturn's static-auth-secret takes it, so that coturn can
// check the same credentials.
func LoadSecret(path string) ([]byte, error) {
	b, err := keyfile.Load(path, "turn secret")
	if err != nil {
		return nil, err
	}
	b = bytes.TrimSpace(b)
	if len(b) < keyfile.MinLength {
		return nil, fmt.Errorf("turn secret %s: %d bytes without white space, want at least %d", path, len(b), keyfile.MinLength)
	}
	return b, nil
}
