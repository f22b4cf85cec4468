package metadict

import (
	"strings"
	"testing"
)

const guid = "58b5981328400c6b5003000083ecc375"

func TestParseKey(t *testing.T) {
	server := "shared/" + guid + "/vendor/vendor.dovecot/pvt/server/"
	for key, want := range map[string]Key{
		// As Dovecot 2.3 and 2.4 send them for IMAP (testdata/v4/13-15 of
		// sidecar/dict; 2.3's layout is the same).
		server + "vendor/deltachat/turn":              KeyTurn,
		server + "vendor/deltachat/irohrelay":         KeyIrohRelay,
		server + "vendor/deltachat/maxsmtprecipients": KeyMaxSMTPRecipients,
		server + "vendor/deltachat/appversions":       KeyAppVersions,
		// Dovecot answers /shared/comment and /shared/admin itself
		// (mail_server_comment, mail_server_admin): never ours.
		server + "comment":              KeyUnknown,
		server + "admin":                KeyUnknown,
		"priv/" + guid + "/devicetoken": KeyDeviceToken,
		"priv/" + guid + "/messagenew":  KeyMessageNew,
		// doveadm dict, without the GUID (testdata/v3/01).
		"shared/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn": KeyTurn,

		// Wrong prefixes and names.
		server + "vendor/deltachat/missing":                                             KeyUnknown,
		server + "vendor/deltachat/turn/":                                               KeyUnknown,
		server + "vendor/deltachat/Turn":                                                KeyUnknown,
		server + "vendor/deltachat":                                                     KeyUnknown,
		"shared/" + guid + "/vendor/deltachat/turn":                                     KeyUnknown, // GETMETADATA INBOX /shared/vendor/deltachat/turn
		"priv/" + guid + "/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn":      KeyUnknown,
		"shared/" + guid + "/" + guid + "/vendor/vendor.dovecot/pvt/server/comment":     KeyUnknown,
		"shared/" + strings.ToUpper(guid) + "/vendor/vendor.dovecot/pvt/server/comment": KeyUnknown,
		"shared/" + guid[:31] + "/vendor/vendor.dovecot/pvt/server/comment":             KeyUnknown,
		"priv/devicetoken":                         KeyUnknown,
		"priv/" + guid + "/devicetoken/x":          KeyUnknown,
		"priv/" + guid + "/comment":                KeyUnknown,
		"priv/" + guid + "devicetoken":             KeyUnknown,
		"shared/" + guid + "/devicetoken":          KeyUnknown,
		"priv/quota/storage":                       KeyUnknown,
		"shared/last-login/alice@example.org":      KeyUnknown,
		"shared/passdb/x":                          KeyUnknown,
		"":                                         KeyUnknown,
		"vendor/vendor.dovecot/pvt/server/comment": KeyUnknown,
		"/shared/vendor/deltachat/turn":            KeyUnknown,
		"priv/" + guid + "/vendor/deltachat/turn":  KeyUnknown,
		"shared/" + guid + "/vendor/vendor.dovecot/pvt/server/devicetoken": KeyUnknown,
	} {
		if got := ParseKey(key); got != want {
			t.Errorf("ParseKey(%q) = %v, want %v", key, got, want)
		}
	}
}

// FuzzParseKey: no panic, a known key ends in its name under one of the
// two prefixes, and the GUID never matters.
func FuzzParseKey(f *testing.F) {
	for _, k := range []string{
		"shared/" + guid + "/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn",
		"shared/vendor/vendor.dovecot/pvt/server/comment",
		"priv/" + guid + "/devicetoken", "priv/" + guid + "/messagenew",
		"priv/" + guid + "/", "shared/" + guid, "priv/", "",
	} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k := ParseKey(key)
		if k == KeyUnknown {
			return
		}
		if !strings.HasPrefix(key, "shared/") && !strings.HasPrefix(key, "priv/") {
			t.Fatalf("%q parsed as %v without a shared/ or priv/ prefix", key, k)
		}
		if !strings.HasSuffix(key, "/"+k.String()) {
			t.Fatalf("%q parsed as %v", key, k)
		}
		rest := key[strings.IndexByte(key, '/')+1:]
		if g := cutGUID(rest); g != rest {
			other := key[:len(key)-len(rest)] + "0123456789abcdef0123456789abcdef/" + g
			if ParseKey(other) != k {
				t.Fatalf("%q is %v, but with another GUID %v", key, k, ParseKey(other))
			}
		}
	})
}
