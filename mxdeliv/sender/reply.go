package sender

import (
	"strconv"
	"strings"
)

// Reply is the result of one recipient, in SMTP terms: it goes back to
// Postfix as that recipient's LMTP reply after DATA. A 2xx code means the
// peer took the message for that recipient, 4xx that Postfix retries it,
// 5xx that Postfix bounces it.
type Reply struct {
	Code int
	// Enhanced is the RFC 3463 status code ("5.1.1"); its class always
	// matches Code's first digit.
	Enhanced string
	// Text is one line of printable ASCII, never empty.
	Text string
	// Via says how the answer was obtained (for metrics): ViaHTTPS,
	// ViaSMTP or ViaNone (found out without talking to a peer).
	Via Via
}

// Via is the path a delivery took.
type Via string

// Delivery paths.
const (
	ViaHTTPS Via = "https"
	ViaSMTP  Via = "smtp"
	ViaNone  Via = "none"
)

// Vias lists every path, for pre-created metrics.
var Vias = []Via{ViaHTTPS, ViaSMTP, ViaNone}

// String is the reply line as written on the wire, without CRLF.
func (r Reply) String() string {
	return strconv.Itoa(r.Code) + " " + r.Enhanced + " " + r.Text
}

// OK reports a delivery the peer acknowledged.
func (r Reply) OK() bool { return r.Code/100 == 2 }

// Temporary reports a failure Postfix should retry.
func (r Reply) Temporary() bool { return r.Code/100 == 4 }

// Permanent reports a failure Postfix should bounce.
func (r Reply) Permanent() bool { return r.Code/100 == 5 }

// newReply builds a reply with a fixed text from us.
func newReply(code int, enhanced, text string, via Via) Reply {
	return Reply{Code: code, Enhanced: enhanced, Text: text, Via: via}
}

// maxReplyText bounds the text of a reply we pass on from a peer: Postfix
// puts it into logs and bounces, and a peer decides its length.
const maxReplyText = 400

// parseReplyLine parses one SMTP reply as a peer wrote it, "550 5.1.1 text"
// or "550 text" or "550-text" (the last line of a multi-line reply is the
// caller's business), into a Reply. It reports false unless the line
// starts with a 2xx, 4xx or 5xx code followed by a space, a dash or the
// end. A missing or mismatched enhanced code becomes c.0.0 of the code's
// class; the text is cleaned to printable ASCII.
func parseReplyLine(s string) (Reply, bool) {
	if len(s) < 3 || (len(s) > 3 && s[3] != ' ' && s[3] != '-') {
		return Reply{}, false
	}
	code, err := strconv.Atoi(s[:3])
	if err != nil || s[0] < '2' || s[0] > '5' || s[0] == '3' || code < 200 {
		return Reply{}, false
	}
	rest := ""
	if len(s) > 4 {
		rest = s[4:]
	}
	enh, text := splitEnhanced(rest)
	if enh == "" || enh[0] != s[0] {
		enh, text = s[:1]+".0.0", rest
	}
	text = cleanText(text)
	if text == "" {
		text = "(no text)"
	}
	return Reply{Code: code, Enhanced: enh, Text: text}, true
}

// splitEnhanced splits "5.1.1 rest" into its RFC 3463 code and the rest;
// enh is "" if rest does not start with one.
func splitEnhanced(s string) (enh, text string) {
	word, after, _ := strings.Cut(s, " ")
	parts := strings.Split(word, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return "", s
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return "", s
		}
	}
	return word, after
}

// cleanText keeps printable ASCII, turns the rest into '?', collapses
// space at the ends and cuts to maxReplyText.
func cleanText(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > maxReplyText {
		s = s[:maxReplyText]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c > 0x7e {
			b[i] = '?'
		}
	}
	return string(b)
}

// Replies we give without a peer's words.
var (
	replyDelivered      = newReply(250, "2.0.0", "OK", ViaNone)
	replyNullMX         = newReply(556, "5.1.10", "Recipient address has null MX", ViaNone)
	replyNoDomain       = newReply(550, "5.1.2", "Recipient domain does not exist", ViaNone)
	replyDNSTemp        = newReply(451, "4.4.3", "DNS lookup of the recipient domain failed, try again later", ViaNone)
	replyUnreachable    = newReply(451, "4.4.1", "No mail server of the recipient domain could be reached, try again later", ViaNone)
	replyBusy           = newReply(451, "4.4.5", "Too many deliveries to this destination, try again later", ViaNone)
	replyTooBig         = newReply(552, "5.3.4", "Message exceeds maximum size", ViaNone)
	replyNoValidRcpts   = newReply(550, "5.1.1", "No valid recipients", ViaNone)
	replyEncryption     = newReply(523, "5.7.1", "Encryption Needed: Invalid Unencrypted Mail", ViaNone)
	replyQuota          = newReply(452, "4.2.2", "Mailbox full, try again later", ViaNone)
	replyNoUTF8         = newReply(553, "5.6.7", "The receiving server does not support internationalized addresses", ViaNone)
	replyShuttingDown   = newReply(421, "4.3.2", "Service shutting down, try again later", ViaNone)
	replyLocalError     = newReply(451, "4.3.0", "Local error in processing, try again later", ViaNone)
	replyLiteralRefused = newReply(550, "5.1.2", "Address literals of private or special networks are not delivered to", ViaNone)
	replyOutOfTime      = newReply(451, "4.4.7", "The delivery time of this message ran out, try again later", ViaNone)
	replyInterruptedTLS = newReply(451, "4.7.5", "No mail server of the recipient domain offered usable TLS, try again later", ViaNone)
)
