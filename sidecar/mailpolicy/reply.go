package mailpolicy

import (
	"fmt"
	"strings"
)

// Reply is an SMTP reply. It is the typed error that reaches the protocol
// edge: the milter sends it to Postfix, the check tool prints it.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

// Error implements error; it is the reply line.
func (r Reply) Error() string { return r.String() }

func (r Reply) String() string {
	return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text)
}

// Temporary reports whether the reply is a 4xx.
func (r Reply) Temporary() bool { return r.Code/100 == 4 }

// Accepted reports whether the reply is a 2xx.
func (r Reply) Accepted() bool { return r.Code/100 == 2 }

// The fixed replies. The text of ReplyCleartext is matched by Delta Chat
// ("Invalid Unencrypted Mail" shows the user a hint to set up encryption)
// and by the existing relay's tests ("523", "Encryption Needed"). Never
// use 550 5.5.0: Delta Chat retries it as a Postfix misconfiguration.
var (
	ReplyAccepted        = Reply{250, "2.0.0", "accepted"}
	ReplyCleartext       = Reply{523, "5.7.1", "Encryption Needed: Invalid Unencrypted Mail"}
	ReplyBadFrom         = Reply{554, "5.7.1", "From header must be exactly the authenticated sender address"}
	ReplyBadSender       = Reply{553, "5.7.1", "Envelope sender must be the authenticated user"}
	ReplyBadFromIncoming = Reply{554, "5.7.1", "From header must be exactly one plain address"}
	ReplyBadEnvelope     = Reply{553, "5.1.7", "Envelope sender must be a plain address"}
	ReplyBadSenderField  = Reply{554, "5.7.1", "Sender, Reply-To and Resent- fields must name the authenticated sender or be absent"}
	ReplyBadHeader       = Reply{554, "5.6.0", "Malformed header field name"}
	ReplyTooManyRcpts    = Reply{452, "4.5.3", "Too many recipients"}
	ReplyUnsigned        = Reply{554, "5.7.1", "No DKIM signature found"}
	ReplyInvalidSig      = Reply{554, "5.7.1", "No valid DKIM signature found: signature does not verify"}
	ReplyUnaligned       = Reply{554, "5.7.1", "No valid DKIM signature found: signing domain not aligned with From"}
	ReplyDKIMTempFail    = Reply{451, "4.7.5", "DKIM key lookup failed, try again later"}
	ReplyHeaderTooLarge  = Reply{552, "5.3.4", "Header section too large"}
	ReplyFoldedTooOften  = Reply{552, "5.3.4", "Header field folded over too many lines"}
	ReplyInternal        = Reply{451, "4.3.0", "Internal error, try again later"}
)

// duplicateField is the reply for a message with two fields of the
// allowlisted name (canonical, so never text of the sender's).
func duplicateField(name string) Reply {
	return Reply{554, "5.6.0", "Header field " + printable(name) + " must occur at most once"}
}

// rateLimited is the reply for a sender over its rate.
func rateLimited(addr string) Reply {
	return Reply{450, "4.7.1", "Too much mail from " + printable(addr) + ", try again later"}
}

// printable keeps reply text to printable ASCII.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}
