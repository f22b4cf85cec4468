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
	// outSplit: a receiver we understand refused one of several
	// recipients; SMTP to the same host gives each its own answer, and
	// the host keeps its /mxdeliv (it is not remembered as SMTP-only).
	outSplit outcome = "split"
	// outBusy: a receiver we understand is busy for now (503 or 429 with
	// a temporary SMTP reply); SMTP takes this message, and the host
	// keeps its /mxdeliv: one busy moment must not send it half an hour
	// of mail over SMTP.
	outBusy outcome = "busy"
)

// outcomes lists them for pre-created metrics.
var outcomes = []outcome{outDelivered, outFinal, outFallback, outSplit, outBusy}

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
	case status == 200:
		if !acknowledgement(text) {
			// A web server that is no receiver (a soft 404 page)
			// must not swallow the mail.
			return outFallback, Reply{}
		}
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
			return outSplit, Reply{}
		}
		return outFinal, via(r)
	case status == 413:
		// The receivers' own words only: a web server in front with a
		// smaller body limit (nginx's default is 1 MiB) answers 413 too,
		// and its MX may well take the message over SMTP.
		if r, ok := parseReplyLine(text); ok && r.Permanent() {
			return outFinal, via(r)
		}
		if text == "message too large" {
			return outFinal, via(replyTooBig)
		}
		// SMTP for this message only: one big message must not make the
		// host SMTP-only for everyone's.
		return outBusy, Reply{}
	case status == 403 && strings.HasPrefix(text, "Encryption Needed"):
		return outFinal, via(replyEncryption)
	case status == 503 || status == 429:
		if r, ok := parseReplyLine(text); ok && r.Temporary() {
			return outBusy, Reply{}
		}
		return outFallback, Reply{}
	case status == 404 && text == "No valid recipients":
		return outFinal, via(replyNoValidRcpts)
	case status == 507 && text == "quota":
		return outFinal, via(replyQuota)
	}
	// Other 2xx, 3xx (redirects are not followed), 403 (madmail's
	// "Forbidden" is also any web server's), 404 and 405 without a
	// receiver's words, 429, 5xx: no usable /mxdeliv here now; the
	// peer's SMTP speaks for itself.
	return outFallback, Reply{}
}

// acknowledgement reports whether the first line of a 200 answer is an
// SMTP 2xx reply, as the reference relay and ours answer ("250 OK"). Not
// madmail's "OK" or empty body: any web server says as much (Caddy answers
// every unrouted path 200 with nothing), and taking that for a delivery
// loses the mail; a madmail peer gets it over SMTP instead (a second copy
// at worst, which Delta Chat drops by Message-ID).
func acknowledgement(text string) bool {
	r, ok := parseReplyLine(text)
	return ok && r.OK()
}

// recipientLevel reports whether a rejection in a 400 answer may concern
// only some recipients: an addressing status (x.1.x: bad mailbox, bad
// destination), or any reply from the reference relay's re-injection,
// which only happens after the message as a whole passed its checks.
func recipientLevel(r Reply, text string) bool {
	return strings.HasPrefix(r.Enhanced[1:], ".1.") || strings.Contains(text, reinjectionMarker)
}
