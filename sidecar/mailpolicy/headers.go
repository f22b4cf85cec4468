package mailpolicy

import (
	"cmp"
	"net/mail"
	"sort"
	"strings"
	"time"

	"chatmail.dev/sidecar/bounce"
	"chatmail.dev/sidecar/mimescan"
)

// The header policy: every field of a chatmail message that reaches a
// Maildir or leaves the server is on this allowlist and has the shape
// given here. Fields not on it are removed, not refused, so that mail
// from other OpenPGP clients still gets through without what they add.
// A field on the list that fails its shape is removed too, except From
// (refused earlier) and Content-Type (the judge decides). A field on the
// list may occur once, and every field name must be RFC 5322 ftext: a
// message with a second Message-ID, or with a field called "ſubject", is
// refused (see headerPolicy). Outgoing, the changes are made before the
// message is signed; incoming, after its signature is verified.
//
// What a person could read in the fields that remain is bounded: the
// address local parts, the msg-ids, the Autocrypt address and the few
// tokens below; see ReadableHeaderBudget.

// Bounds of the header policy.
const (
	// MaxAddressList bounds To and Cc as rewritten, about 65 addresses of
	// chatmail's length. Delta Chat writes "hidden-recipients" (2.x) or
	// the group members (older cores); a longer list becomes
	// "hidden-recipients", as current cores write it anyway.
	MaxAddressList = 2048
	// MaxReferences bounds the msg-ids kept in References.
	MaxReferences = 10
	// MaxToken bounds Secure-Join tokens (Delta Chat's are 24 to 32
	// characters) and fingerprints (40 or 64 hex digits).
	MaxToken = 64
	// MaxAutocryptKey bounds the decoded Autocrypt keydata: Delta Chat's
	// Ed25519 keys are about 600 bytes, RSA-4096 keys with a few
	// signatures about 3,000, keys with ML-KEM subkeys about 2,000.
	MaxAutocryptKey = 8 << 10
)

// hiddenRecipients is what Delta Chat writes in To when it hides them.
const hiddenRecipients = `"hidden-recipients": ;`

// subjectPlaceholder is the Subject Delta Chat writes on encrypted mail.
const subjectPlaceholder = "[...]"

// secureJoinSteps are the values of the Secure-Join field of every
// Delta Chat core; a fixed set, so that the field carries no text.
var secureJoinSteps = map[string]bool{
	"vc-request": true, "vg-request": true, "vc-auth-required": true, "vg-auth-required": true,
	"vc-request-with-auth": true, "vg-request-with-auth": true, "vc-contact-confirm": true,
	"vg-member-added": true, "vc-contact-confirm-received": true, "vg-member-added-received": true,
	"vc-request-pubkey": true, "vc-pubkey": true,
}

// fieldRule checks one field; it returns the value the field keeps, and
// false when the field goes.
type fieldRule func(t *Txn, value string) (string, bool)

// fieldRules is the allowlist, by canonical field name. Each field may
// appear once: a message with two of one is refused (see headerPolicy).
var fieldRules = map[string]fieldRule{
	"From":                      func(t *Txn, _ string) (string, bool) { return "<" + t.from + ">", true },
	"To":                        addressList,
	"Cc":                        addressList,
	"Date":                      date,
	"Message-Id":                msgIDs(1),
	"In-Reply-To":               msgIDs(1),
	"References":                msgIDs(MaxReferences),
	"Subject":                   fixed(subjectPlaceholder),
	"Mime-Version":              fixed("1.0"),
	"Content-Type":              contentType,
	"Content-Transfer-Encoding": transferEncoding,
	"Chat-Version":              fixed("1.0"),
	"Chat-Is-Post-Message":      fixed("1"),
	"Autocrypt":                 autocrypt,
	"Auto-Submitted":            autoSubmitted,
	"Secure-Join": func(_ *Txn, v string) (string, bool) {
		v = strings.ToLower(strings.TrimSpace(v))
		return v, secureJoinSteps[v]
	},
	"Secure-Join-Invitenumber": token,
	"Secure-Join-Auth":         token,
	"Secure-Join-Group":        token,
	"Secure-Join-Fingerprint":  token,
}

// senderFields must name the authenticated user, if present, on outgoing
// mail (then they are removed all the same: Delta Chat writes none).
var senderFields = []string{"Sender", "Reply-To", "Resent-From", "Resent-Sender"}

// HeaderChange is one change to the header: Value replaces the Index-th
// (from 1) field called Name, or deletes it when empty.
type HeaderChange struct {
	Name  string
	Index int
	Value string
}

// headerPolicy decides the changes to t's header, or refuses the message
// (a non-nil verdict):
//
//   - A field name that is not RFC 5322 ftext (printable ASCII but ':'):
//     parsers match such names differently (Unicode case folding takes
//     "ſubject" for "subject"), so which field a change names would
//     depend on the reader. Postfix never passes one to the milter (it
//     takes such a line for the start of the body) but the obsolete
//     "Subject :", whose name the MTA and a MIME parser may match
//     differently too.
//   - An allowlisted field that occurs more than once: DKIM verifies the
//     last occurrence (RFC 6376 5.4.2), so a copy put above a signed
//     original would pass unsigned. Delta Chat writes each once, and RFC
//     5322 3.6 allows each of them once.
func (t *Txn) headerPolicy() ([]HeaderChange, *Verdict) {
	count := make(map[string]int, len(t.fields))
	for _, f := range t.fields {
		if !fieldName(cmp.Or(f.Raw, f.Name)) {
			return nil, t.final(ReasonBadHeader, ReplyBadHeader)
		}
		count[f.Name]++
	}
	for _, f := range t.fields {
		if fieldRules[f.Name] != nil && count[f.Name] > 1 {
			return nil, t.final(ReasonDuplicateField, duplicateField(f.Name))
		}
	}
	var changes, deletes []HeaderChange
	// Every name is ftext now, so ASCII case folding is how both the MTA
	// (strncasecmp) and Apply count fields of a name.
	seen := make(map[string]int, len(count))
	for i := range t.fields {
		f := &t.fields[i]
		name := cmp.Or(f.Raw, f.Name) // the MTA writes and matches the name as given
		key := strings.ToLower(name)
		seen[key]++
		rule := fieldRules[f.Name]
		var v string
		keep := rule != nil
		if keep {
			v, keep = rule(t, unfold(f.Value))
			// An empty value is a deletion to the MTA.
			keep = keep && (v != "" || sameWords(v, unfold(f.Value)))
		}
		switch {
		case !keep:
			f.drop = true
			deletes = append(deletes, HeaderChange{Name: name, Index: seen[key]})
		case !sameWords(v, unfold(f.Value)):
			f.repl = v
			changes = append(changes, HeaderChange{Name: name, Index: seen[key], Value: v})
		}
	}
	// Delete the last occurrences first: removing one never shifts the
	// index of an earlier one.
	sort.SliceStable(deletes, func(i, j int) bool { return deletes[i].Index > deletes[j].Index })
	return append(changes, deletes...), nil
}

// fieldName reports whether name is a field name of RFC 5322 3.6.8: one or
// more printable US-ASCII characters but ':'.
func fieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 33 || c > 126 || c == ':' {
			return false
		}
	}
	return true
}

// asciiEqualFold is strings.EqualFold without Unicode's folding, under
// which "ſ" (U+017F) equals "s" and the Kelvin sign "k".
func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		if asciiLower(a[i]) != asciiLower(b[i]) {
			return false
		}
	}
	return true
}

func asciiLower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// sendersOK reports whether the outgoing sender fields name only the
// authenticated user.
func (t *Txn) sendersOK() bool {
	for _, name := range senderFields {
		for _, v := range t.values(name) {
			list, err := mail.ParseAddressList(unfold(v))
			if err != nil || len(list) == 0 {
				return false
			}
			for _, a := range list {
				if !sameAddress(normalize(a.Address), t.auth) {
					return false
				}
			}
		}
	}
	return true
}

// unfold joins folded lines.
func unfold(v string) string {
	if !strings.ContainsAny(v, "\r\n") {
		return v
	}
	return strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v)
}

// sameWords reports whether a and b differ in white space at most: a
// value refolded is not worth a change.
func sameWords(a, b string) bool {
	return strings.Join(strings.Fields(a), " ") == strings.Join(strings.Fields(b), " ")
}

func fixed(want string) fieldRule {
	return func(*Txn, string) (string, bool) { return want, true }
}

// addressList keeps the bare addresses of To or Cc: no display names, no
// group names; an empty, unparsable or long list becomes the placeholder
// Delta Chat writes.
func addressList(_ *Txn, v string) (string, bool) {
	list, err := mail.ParseAddressList(v)
	if err != nil || len(list) == 0 {
		return hiddenRecipients, true
	}
	var b strings.Builder
	for _, a := range list {
		addr := normalize(a.Address)
		if !boundedAddress(addr) {
			return hiddenRecipients, true
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString("<" + addr + ">")
		if b.Len() > MaxAddressList {
			return hiddenRecipients, true
		}
	}
	return b.String(), true
}

// date keeps a parsable date in the one format Delta Chat writes.
func date(_ *Txn, v string) (string, bool) {
	d, err := mail.ParseDate(v)
	if err != nil {
		return "", false
	}
	return d.Format(time.RFC1123Z), true
}

func msgIDs(max int) fieldRule {
	return func(_ *Txn, v string) (string, bool) {
		ids, ok := mimescan.ParseMsgIDs(v, max)
		return strings.Join(ids, " "), ok
	}
}

func token(_ *Txn, v string) (string, bool) {
	v = strings.TrimSpace(v)
	return v, mimescan.Token(v, MaxToken)
}

// contentTypeParams lists, per top-level media type, the parameters kept.
// Other types do not pass the judge.
var contentTypeParams = map[string][]string{
	"multipart/encrypted": {"protocol", "boundary"},
	"multipart/mixed":     {"boundary"},
	"multipart/report":    {"report-type", "boundary"},
}

// contentType keeps the top-level Content-Type with only the parameters
// its type needs. The judge has refused values that parsers read
// differently, so the parameters parsed here are the ones it used.
func contentType(_ *Txn, v string) (string, bool) {
	v = strings.TrimSpace(v)
	mt, params, err := mimescan.ParseContentType(v)
	keep := contentTypeParams[mt]
	if err != nil || keep == nil || onlyParams(params, keep) {
		return v, true
	}
	var b strings.Builder
	b.WriteString(mt)
	for _, k := range keep {
		if p, ok := params[k]; ok {
			b.WriteString("; " + k + `="` + p + `"`)
		}
	}
	return b.String(), true
}

func transferEncoding(_ *Txn, v string) (string, bool) {
	v = strings.ToLower(strings.TrimSpace(v))
	return v, v == "7bit" || v == "8bit" || v == "binary"
}

// autoSubmitted keeps the keyword of RFC 3834, without parameters and
// without a comment after it (sendmail writes "auto-generated (failure)").
func autoSubmitted(_ *Txn, v string) (string, bool) {
	kw, _, _ := strings.Cut(v, ";")
	kw = strings.TrimSpace(kw)
	if i := strings.IndexByte(kw, '('); i >= 0 && strings.HasSuffix(kw, ")") && !strings.ContainsAny(kw[i+1:len(kw)-1], "()\\") {
		kw = strings.TrimSpace(kw[:i])
	}
	kw = strings.ToLower(kw)
	return kw, kw == "auto-generated" || kw == "auto-replied" || kw == "auto-notified" || kw == "no"
}

// onlyParams reports whether every parameter is one of names.
func onlyParams(params map[string]string, names []string) bool {
	n := 0
	for _, name := range names {
		if _, ok := params[name]; ok {
			n++
		}
	}
	return n == len(params)
}

// The readable text budget: the most bytes a person could read in an
// accepted message as stored (header and body, outside the base64 of the
// ciphertext and of Autocrypt keys), attacker-chosen or not. Measured by
// TestReadableBudget on the largest message of each accepted shape.
const (
	// HeaderBudget is what the header policy lets through: addresses in
	// From, To and Cc, msg-ids, Secure-Join tokens, fixed values; and 512
	// bytes for the Return-Path line the delivery agent adds from the
	// envelope sender (a boundedAddress).
	HeaderBudget = 7 << 10
	// EncryptedBudget adds the MIME preamble and epilogue, the two part
	// headers and the armor's Version header.
	EncryptedBudget = HeaderBudget + 1536
	// SecureJoinBudget adds the one text part of a legacy request.
	SecureJoinBudget = HeaderBudget + 512
	// BounceBudget adds a delivery report (package bounce) and what a
	// returned encrypted message carries beside its ciphertext.
	BounceBudget = EncryptedBudget + bounce.MaxReadable
)
