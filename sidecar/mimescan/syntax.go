package mimescan

import (
	"strings"
)

// MaxMsgID bounds one msg-id, angle brackets included. Delta Chat writes
// <uuid@localhost> (48 bytes), older cores <Mr.xxx.yyy@domain>; the
// longest seen from big providers are about 100.
const MaxMsgID = 128

// ParseMsgIDs parses a field value made of msg-ids (RFC 5322 3.6.4),
// separated by white space only (no comments, no obsolete forms), and
// returns them with their angle brackets. It fails on anything else, on an
// id longer than MaxMsgID and on more than max ids.
func ParseMsgIDs(v string, max int) ([]string, bool) {
	var ids []string
	for _, id := range strings.Fields(v) {
		if len(ids) == max || !MsgID(id) {
			return nil, false
		}
		ids = append(ids, id)
	}
	return ids, len(ids) > 0
}

// MsgID reports whether id is "<" dot-atom-text "@" dot-atom-text ">" or
// with a no-fold-literal right side, at most MaxMsgID bytes.
func MsgID(id string) bool {
	if len(id) > MaxMsgID || len(id) < 5 || id[0] != '<' || id[len(id)-1] != '>' {
		return false
	}
	left, right, ok := strings.Cut(id[1:len(id)-1], "@")
	if !ok || !DotAtom(left) {
		return false
	}
	if strings.HasPrefix(right, "[") && strings.HasSuffix(right, "]") && len(right) > 2 {
		for _, c := range []byte(right[1 : len(right)-1]) {
			if c <= ' ' || c > '~' || c == '[' || c == ']' || c == '\\' {
				return false
			}
		}
		return true
	}
	return DotAtom(right)
}

// DotAtom reports whether s is dot-atom-text (RFC 5322 3.2.3): dot-separated
// non-empty runs of atext.
func DotAtom(s string) bool {
	if s == "" {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" {
			return false
		}
		for i := 0; i < len(label); i++ {
			if !atext(label[i]) {
				return false
			}
		}
	}
	return true
}

func atext(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

// Token reports whether s is 1 to max bytes of letters, digits and "._-":
// enough for charsets and file names like "encrypted.asc", too little
// for prose.
func Token(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
