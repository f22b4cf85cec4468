package metadict

import "strings"

// Key is what a dict key names, of the few keys this server knows.
type Key int

// The keys served. KeyUnknown is every other key: "not found".
const (
	KeyUnknown Key = iota
	// Server metadata (GETMETADATA "" /shared/...).
	KeyTurn
	KeyIrohRelay
	KeyMaxSMTPRecipients
	KeyAppVersions
	// Private metadata of a mailbox (/private/...).
	KeyDeviceToken
	KeyMessageNew
)

var keyNames = [...]string{"other", "turn", "irohrelay", "maxsmtprecipients", "appversions", "devicetoken", "messagenew"}

// String is the key's name as the metrics label it.
func (k Key) String() string {
	if k < 0 || int(k) >= len(keyNames) {
		return keyNames[0]
	}
	return keyNames[k]
}

// Dovecot's layout of METADATA in the dict (the same in 2.3 and 2.4;
// sidecar/dict/testdata/v4/13-15): a mailbox's entries are under
// priv/<mailbox GUID>/ and shared/<mailbox GUID>/, and the server's
// entries are INBOX entries under vendor/vendor.dovecot/pvt/server/.
const (
	sharedPrefix = "shared/"
	privPrefix   = "priv/"
	serverPrefix = "vendor/vendor.dovecot/pvt/server/"
)

var serverKeys = map[string]Key{
	"vendor/deltachat/turn":              KeyTurn,
	"vendor/deltachat/irohrelay":         KeyIrohRelay,
	"vendor/deltachat/maxsmtprecipients": KeyMaxSMTPRecipients,
	"vendor/deltachat/appversions":       KeyAppVersions,
}

// ParseKey says which key a dict key is:
//
//	shared/<GUID>/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn (irohrelay, maxsmtprecipients, appversions)
//	priv/<GUID>/devicetoken
//	priv/<GUID>/messagenew
//
// <GUID> is a mailbox GUID, 32 lower-case hex digits, and is ignored: a
// token or new mail belongs to the account, whichever mailbox. The server
// keys are also accepted without it, as doveadm dict sends them. Anything
// else, the same names under another prefix included, is KeyUnknown.
func ParseKey(key string) Key {
	if rest, ok := strings.CutPrefix(key, sharedPrefix); ok {
		rest = cutGUID(rest)
		name, ok := strings.CutPrefix(rest, serverPrefix)
		if !ok {
			return KeyUnknown
		}
		return serverKeys[name]
	}
	if rest, ok := strings.CutPrefix(key, privPrefix); ok {
		name := cutGUID(rest)
		if len(name) == len(rest) {
			return KeyUnknown
		}
		switch name {
		case "devicetoken":
			return KeyDeviceToken
		case "messagenew":
			return KeyMessageNew
		}
	}
	return KeyUnknown
}

// guidLength is the length of a mailbox GUID in hex (Dovecot's guid_128).
const guidLength = 32

// cutGUID returns s without a leading "<GUID>/", or s when it has none.
func cutGUID(s string) string {
	if len(s) <= guidLength || s[guidLength] != '/' {
		return s
	}
	for i := range guidLength {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return s
		}
	}
	return s[guidLength+1:]
}
