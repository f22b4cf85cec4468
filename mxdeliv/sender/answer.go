package sender

import (
	"bytes"
	"strings"
)

// outcome is what the answer to a POST means for the delivery.
type outcome string

const (
	// outDelivered: the peer took the message for every recipient.
	outDelivered outcome = "delivered"
	// outFinal: the reply holds for every recipient, and SMTP is not tried
	// (a policy rejection would be the same or worse over SMTP).
	outFinal outcome = "final"
	// outFallback: the peer has no /mxdeliv we understand, or it failed;
	// SMTP to the same host is tried in the same attempt.
	outFallback outcome = "fallback"
)

// outcomes lists them for pre-created metrics.
var outcomes = []outcome{outDelivered, outFinal, outFallback}

// maxAnswerBody bounds what is read of an answer's body: the receivers
// answer one short line.
const maxAnswerBody = 4096

// reinjectionMarker is how the reference relay marks a reply that came from
// re-injecting the message into its Postfix, after its own checks passed:
// such a reply may concern one recipient of several.
const reinjectionMarker = "(forwarded from"

// classifyAnswer maps the status and body of a /mxdeliv answer for a
// request with nrcpt recipients to an outcome and, for outFinal, the reply
// every recipient gets. The table is in the package doc.
func classifyAnswer(status int, body []byte, nrcpt int) (outcome, Reply) {
	if len(body) > maxAnswerBody {
		body = body[:maxAnswerBody]
	}
	line, _, _ := bytes.Cut(body, []byte("\n"))
	text := strings.TrimSpace(string(line))
	via := func(r Reply) Reply { r.Via = ViaHTTPS; return r }
	switch {
	case status >= 200 && status <= 299:
		return outDelivered, via(replyDelivered)
	case status == 400:
		r, ok := parseReplyLine(text)
		if !ok || r.OK() {
			// Not the reference relay's SMTP text ("bad request",
			// "Missing X-Mail-To header"): a receiver we do not
			// understand; SMTP speaks for itself.
			return outFallback, Reply{}
		}
		if nrcpt > 1 && recipientLevel(r, text) {
			// One recipient's failure in a POST for several: SMTP
			// gives each its own answer.
			return outFallback, Reply{}
		}
		return outFinal, via(r)
	case status == 413:
		if r, ok := parseReplyLine(text); ok && r.Permanent() {
			return outFinal, via(r)
		}
		return outFinal, via(replyTooBig)
	case status == 403:
		switch {
		case strings.HasPrefix(text, "Encryption Needed"):
			return outFinal, via(replyEncryption)
		case text == "Forbidden":
			return outFinal, via(replyForbidden)
		}
		return outFallback, Reply{}
	case status == 404 && text == "No valid recipients":
		return outFinal, via(replyNoValidRcpts)
	case status == 507 && text == "quota":
		return outFinal, via(replyQuota)
	}
	// 3xx (redirects are not followed), 404 and 405 without a receiver's
	// words, 429, 5xx: no usable /mxdeliv here now.
	return outFallback, Reply{}
}

// recipientLevel reports whether a rejection in a 400 answer may concern
// only some recipients: an addressing status (x.1.x: bad mailbox, bad
// destination), or any reply from the reference relay's re-injection,
// which only happens after the message as a whole passed its checks.
func recipientLevel(r Reply, text string) bool {
	return strings.HasPrefix(r.Enhanced[1:], ".1.") || strings.Contains(text, reinjectionMarker)
}
