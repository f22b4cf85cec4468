package receiver

import (
	"net/http"
	"strings"

	"chatmail.dev/sidecar/accounts"
	"chatmail.dev/sidecar/mailpolicy"
	"chatmail.dev/sidecar/mimescan"
)

// The request header fields of /mxdeliv. HTTP field names are
// case-insensitive: senders write X-MAIL-FROM as well.
const (
	// HeaderFrom is the envelope sender, at most once; absent or empty
	// (or "<>") is the null sender.
	HeaderFrom = "X-Mail-From"
	// HeaderTo is one recipient, bare or in angle brackets; once per
	// recipient.
	HeaderTo = "X-Mail-To"
	// HeaderBody says which form the body has (FormSMTP by default).
	HeaderBody = "X-Mail-Body"
)

// Body forms, the values of HeaderBody.
const (
	// FormSMTP is what filtermail and our own sender send, and the
	// default: the SMTP DATA
	// bytes as Postfix handed them over, CRLF, dot-stuffed, without the
	// final dot line (a final ".\r\n" at the very end is taken as that line
	// and dropped).
	FormSMTP = "smtp"
	// FormRaw is the message as is (RFC 5322), not dot-stuffed, for a
	// sender that says so with this header.
	FormRaw = "raw"
)

// Envelope is a request's envelope, checked for syntax.
type Envelope struct {
	// From is the envelope sender, "" for the null sender: a plain
	// local@domain (dot-atoms), the domain lower-cased.
	From string
	// To are the recipients, normalized (accounts.Normalize), each once,
	// in the order first given.
	To []string
	// Stuffed says the body is dot-stuffed (FormSMTP).
	Stuffed bool
}

// Replies to envelopes that cannot be used: Postfix's texts for the same
// faults in SMTP.
var (
	ReplyNoRecipients = mailpolicy.Reply{Code: 554, Enhanced: "5.5.1", Text: "Error: no valid recipients"}
	ReplyBadRecipient = mailpolicy.Reply{Code: 501, Enhanced: "5.1.3", Text: "Bad recipient address syntax"}
	ReplyBadSender    = mailpolicy.Reply{Code: 501, Enhanced: "5.1.7", Text: "Bad sender address syntax"}
	ReplyBadBodyForm  = mailpolicy.Reply{Code: 501, Enhanced: "5.5.4", Text: "Unknown " + HeaderBody + " value"}
)

// maxLocal and maxDomain bound the addresses of an envelope (RFC 5321
// 4.5.3.1, and the longest DNS name).
const (
	maxLocal  = 64
	maxDomain = 253
)

// ParseEnvelope reads the envelope of a request: the sender, at most
// maxRcpts recipients (more is mailpolicy.ReplyTooManyRcpts) and the body
// form. A fault is the SMTP reply to give.
func ParseEnvelope(h http.Header, maxRcpts int) (Envelope, *mailpolicy.Reply) {
	var env Envelope
	switch froms := h.Values(HeaderFrom); len(froms) {
	case 0:
	case 1:
		f, ok := parseSender(froms[0])
		if !ok {
			return env, &ReplyBadSender
		}
		env.From = f
	default:
		return env, &ReplyBadSender
	}
	switch forms := h.Values(HeaderBody); {
	case len(forms) == 0:
		env.Stuffed = true
	case len(forms) == 1 && strings.EqualFold(strings.TrimSpace(forms[0]), FormSMTP):
		env.Stuffed = true
	case len(forms) == 1 && strings.EqualFold(strings.TrimSpace(forms[0]), FormRaw):
	default:
		return env, &ReplyBadBodyForm
	}
	tos := h.Values(HeaderTo)
	if len(tos) == 0 {
		return env, &ReplyNoRecipients
	}
	if len(tos) > maxRcpts {
		return env, &mailpolicy.ReplyTooManyRcpts
	}
	seen := make(map[string]bool, len(tos))
	for _, t := range tos {
		r, ok := parseRecipient(t)
		if !ok {
			return env, &ReplyBadRecipient
		}
		if !seen[r] {
			seen[r] = true
			env.To = append(env.To, r)
		}
	}
	return env, nil
}

// unbracket removes surrounding space and one pair of angle brackets.
func unbracket(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "<") && strings.HasSuffix(s, ">") {
		s = s[1 : len(s)-1]
	}
	return s
}

// parseSender returns the envelope sender in the form written to LMTP.
func parseSender(s string) (string, bool) {
	s = unbracket(s)
	if s == "" {
		return "", true
	}
	local, domain, ok := strings.Cut(s, "@")
	domain = strings.ToLower(domain)
	if !ok || !plainLocal(local) || !plainDomain(domain) {
		return "", false
	}
	return local + "@" + domain, true
}

// parseRecipient returns the normalized recipient: the form of the
// account store, and what is written to LMTP.
func parseRecipient(s string) (string, bool) {
	norm, local, domain, err := accounts.Normalize(unbracket(s))
	if err != nil || !plainLocal(local) || !plainDomain(domain) {
		return "", false
	}
	return norm, true
}

// plainLocal: a dot-atom, which has no space, brackets or controls and so
// cannot change an LMTP command.
func plainLocal(l string) bool { return len(l) <= maxLocal && mimescan.DotAtom(l) }

// plainDomain: a lower-case host name or an IPv4 literal, the two shapes
// a [mail] domains entry may have.
func plainDomain(d string) bool {
	if d == "" || len(d) > maxDomain {
		return false
	}
	if strings.HasPrefix(d, "[") && strings.HasSuffix(d, "]") {
		d = d[1 : len(d)-1]
		return d != "" && strings.Trim(d, "0123456789.") == ""
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return mimescan.DotAtom(d)
}

// domainOf returns the domain of a checked address.
func domainOf(addr string) string {
	_, d, _ := strings.Cut(addr, "@")
	return d
}
