package mimescan

import (
	"errors"
	"mime"
	"strings"
)

// ErrAmbiguousParams is returned for a Content-Type value that parsers may
// read differently.
var ErrAmbiguousParams = errors.New("mimescan: ambiguous Content-Type parameters")

// ParseContentType parses a Content-Type field value like
// mime.ParseMediaType, but first refuses what MIME parsers disagree on, so
// that the parameters read here are the ones Delta Chat's parser
// (mailparse) reads:
//
//   - RFC 2231 parameters (a '*' in a name): Go lets "boundary*" override
//     "boundary", mailparse may not;
//   - a parameter name given twice (case-insensitively);
//   - a quoted string holding ';', '"' or '\': mailparse splits the value
//     at every ';' and knows no quoting beyond stripping outer quotes;
//   - an unterminated quoted string.
func ParseContentType(v string) (string, map[string]string, error) {
	quoted := false
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quoted && c == '"':
			quoted = false
		case quoted && (c == ';' || c == '\\'):
			return "", nil, ErrAmbiguousParams
		case !quoted && c == '"':
			quoted = true
		}
	}
	if quoted {
		return "", nil, ErrAmbiguousParams
	}
	// With no ';' inside quotes, splitting at ';' finds every parameter.
	var seen [8]string
	keys := seen[:0]
	_, rest, more := strings.Cut(v, ";")
	for more {
		var seg string
		seg, rest, more = strings.Cut(rest, ";")
		k, _, ok := strings.Cut(seg, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok {
			if k == "" {
				continue // an empty segment, e.g. a trailing ';'
			}
			return "", nil, ErrAmbiguousParams
		}
		if strings.Contains(k, "*") {
			return "", nil, ErrAmbiguousParams
		}
		for _, prev := range keys {
			if prev == k {
				return "", nil, ErrAmbiguousParams
			}
		}
		keys = append(keys, k)
	}
	return mime.ParseMediaType(v)
}

// MaxBoundary is the longest boundary RFC 2046 5.1.1 allows.
const MaxBoundary = 70

// ValidBoundary reports whether b is a boundary as RFC 2046 5.1.1 defines
// it: 1 to 70 bchars, not ending in a space.
func ValidBoundary(b string) bool {
	if b == "" || len(b) > MaxBoundary || b[len(b)-1] == ' ' {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("'()+_,-./:=? ", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// IdentityEncoding reports whether the Content-Transfer-Encoding fields
// leave the body as is: at most one field, and none, 7bit, 8bit or binary.
func IdentityEncoding(values []string) bool {
	switch len(values) {
	case 0:
		return true
	case 1:
		switch strings.ToLower(strings.TrimSpace(values[0])) {
		case "", "7bit", "8bit", "binary":
			return true
		}
	}
	return false
}
