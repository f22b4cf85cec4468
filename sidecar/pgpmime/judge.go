package pgpmime

import (
	"bytes"
	"errors"
	"strings"

	"chatmail.dev/sidecar/mimescan"
)

// Limits that bound both memory and the cleartext a passing message can carry.
const (
	// MaxLine is the longest line the scanner keeps, terminator included.
	MaxLine = mimescan.MaxLine
	// MaxPreamble bounds the preamble and, separately, the epilogue.
	MaxPreamble = 256
	// MaxPartHeader bounds a part's header section; what clients write
	// is about 150 bytes.
	MaxPartHeader = 512
	// MaxSoleText bounds the body of a sole text part that Result.SoleText reports.
	MaxSoleText    = 256
	maxVersionBody = 64
)

// Reasons a message is not encrypted. They are for logs and tests; the reply
// to the client never says which one it was.
var (
	ErrNotEncryptedType = errors.New("pgpmime: top-level type is not multipart/encrypted")
	ErrContentType      = errors.New("pgpmime: Content-Type missing, repeated or malformed")
	ErrProtocol         = errors.New("pgpmime: protocol parameter is not application/pgp-encrypted")
	ErrTransferEncoding = errors.New("pgpmime: transfer encoding is not an identity encoding")
	ErrLongLine         = errors.New("pgpmime: line too long")
	ErrPreamble         = mimescan.ErrEdge
	ErrPartHeader       = mimescan.ErrPartHeader
	ErrPartCount        = errors.New("pgpmime: not exactly two parts")
	ErrVersionPart      = errors.New("pgpmime: first part is not application/pgp-encrypted \"Version: 1\"")
	ErrDataPart         = errors.New("pgpmime: second part is not application/octet-stream")
	ErrUnterminated     = errors.New("pgpmime: multipart body has no close delimiter")
	ErrDelimiter        = mimescan.ErrDelimiter
)

type mode uint8

const (
	modeNone      mode = iota // nothing in the body matters
	modeEncrypted             // multipart/encrypted: full check
	modeMixed                 // multipart/mixed: look for a sole text/plain part
)

// Result is the judgement on one message.
type Result struct {
	// MediaType is the lower-case top-level media type, "" if the
	// Content-Type field is missing or malformed.
	MediaType string
	// Params are the top-level Content-Type parameters (keys lower case).
	Params map[string]string
	// Encrypted is nil when the message is RFC 3156 PGP/MIME with a valid
	// packet sequence, and says why not otherwise.
	Encrypted error
	// SoleText is set when the message is multipart/mixed in the exact
	// shape of Delta Chat's legacy Secure-Join request: a preamble and an
	// epilogue of blank lines only, exactly one part whose header holds
	// only a Content-Type text/plain (no parameter but charset) and at most
	// a Content-Transfer-Encoding 7bit, and a body of at most MaxSoleText
	// bytes. It holds that body, trimmed.
	SoleText string
	// ArmorHeaders counts the armor headers (at most one, Version) of an
	// encrypted message; the policy allows one only on incoming mail.
	ArmorHeaders int
	// Size is the number of body bytes written.
	Size int64
}

// Judge consumes a message body in chunks and judges it. Its memory use is
// fixed, whatever the message size. The zero value is not usable; call Reset.
type Judge struct {
	res  Result
	mode mode
	done bool // the verdict cannot change any more; only count bytes
	err  error

	boundary []byte // "--" and the boundary
	lines    mimescan.Lines

	mp     mimescan.Multipart
	partOK bool   // current part has the right type for its position
	text   []byte // body of part 1 (version part, or sole text part)

	armor armor
}

// NewJudge returns a judge for a message with the given top-level header
// values. contentTypes holds every Content-Type field value (normally one),
// transferEncodings every Content-Transfer-Encoding value. A judge can be
// used for further messages with Reset, which keeps its buffers.
func NewJudge(contentTypes, transferEncodings []string) *Judge {
	j := &Judge{}
	j.mp.Header = make([]byte, 0, MaxPartHeader)
	j.Reset(contentTypes, transferEncodings)
	return j
}

// Reset prepares j for a new message, reusing its buffers; it is as good as
// a new judge from NewJudge.
func (j *Judge) Reset(contentTypes, transferEncodings []string) {
	*j = Judge{lines: j.lines, mp: j.mp, text: j.text[:0], boundary: j.boundary[:0],
		armor: armor{w: walker{esk: j.armor.w.esk}}}
	j.lines.Reset()
	j.armor.reset()
	j.done = true
	if len(contentTypes) != 1 {
		j.res.Encrypted = ErrContentType
		if len(contentTypes) == 0 {
			// RFC 2045 5.2: no Content-Type means text/plain.
			j.res.MediaType = "text/plain"
		}
		return
	}
	mt, params, err := mimescan.ParseContentType(contentTypes[0])
	if err != nil {
		j.res.Encrypted = ErrContentType
		return
	}
	j.res.MediaType, j.res.Params = mt, params
	j.res.Encrypted = ErrNotEncryptedType
	var m mode
	switch mt {
	case "multipart/encrypted":
		if !strings.EqualFold(params["protocol"], "application/pgp-encrypted") {
			j.res.Encrypted = ErrProtocol
			return
		}
		m = modeEncrypted
	case "multipart/mixed":
		m = modeMixed
	default:
		return
	}
	if !mimescan.IdentityEncoding(transferEncodings) {
		j.res.Encrypted = ErrTransferEncoding
		return
	}
	b := params["boundary"]
	if !mimescan.ValidBoundary(b) {
		j.res.Encrypted = ErrContentType
		return
	}
	j.boundary = append(append(j.boundary, "--"...), b...)
	j.mp.Reset(j.boundary, MaxPreamble, MaxPartHeader)
	j.mode, j.done = m, false
	j.res.Encrypted = nil // provisional; Close decides
}

// Write consumes the next chunk of the body. It never fails.
func (j *Judge) Write(p []byte) (int, error) {
	j.res.Size += int64(len(p))
	for rest := p; !j.done; {
		l, r, ok, overlong := j.lines.Next(rest)
		if overlong {
			// No line of the structures accepted here can be this long,
			// so the positive verdicts are out of reach: stop looking.
			j.fail(ErrLongLine)
		}
		if !ok {
			break
		}
		j.line(l)
		rest = r
	}
	return len(p), nil
}

func (j *Judge) fail(err error) {
	if j.err == nil {
		j.err = err
	}
	j.done = true
}

// line handles one complete line, terminator included.
func (j *Judge) line(l []byte) {
	if l[0] != '-' && j.mp.InBody() {
		j.partLine(l) // the armored data: no delimiter, no need to ask
		return
	}
	switch j.mp.Line(l) {
	case mimescan.Failed:
		j.fail(j.mp.Err)
	case mimescan.PartBegins:
		j.endPart(j.mp.Part - 1)
		if j.done {
			return
		}
		j.text = j.text[:0]
		if j.mp.Part > 2 || (j.mode == modeMixed && j.mp.Part > 1) {
			j.fail(ErrPartCount)
		}
	case mimescan.Closed:
		j.endPart(j.mp.Part)
	case mimescan.HeaderEnds:
		j.beginPart()
	case mimescan.BodyLine:
		j.partLine(l)
	}
}

// partDescriptions are the Content-Description values OpenPGP clients
// write on the two parts (lower case): Delta Chat before 2.x, Thunderbird,
// Enigmail.
var partDescriptions = map[string]bool{
	"pgp/mime version identification":  true,
	"pgp/mime versions identification": true,
	"openpgp encrypted message":        true,
}

// partFields holds what a part header says, for the fields clients write.
type partFields struct {
	ct, cte, desc, disp, msgID []string
	other                      bool // any other field
}

// beginPart parses the collected part header and sets up the part body.
func (j *Judge) beginPart() {
	var f partFields
	ok := mimescan.EachField(j.mp.Header, func(name, value []byte) bool {
		v := string(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Type")):
			f.ct = append(f.ct, v)
		case bytes.EqualFold(name, []byte("Content-Transfer-Encoding")):
			f.cte = append(f.cte, v)
		case bytes.EqualFold(name, []byte("Content-Description")):
			f.desc = append(f.desc, v)
		case bytes.EqualFold(name, []byte("Content-Disposition")):
			f.disp = append(f.disp, v)
		case bytes.EqualFold(name, []byte("Message-ID")):
			f.msgID = append(f.msgID, v)
		default:
			f.other = true
		}
		return true
	})
	if !ok || len(f.ct) != 1 {
		j.fail(ErrPartHeader)
		return
	}
	mt, params, err := mimescan.ParseContentType(f.ct[0])
	if err != nil {
		j.fail(ErrPartHeader)
		return
	}
	if j.mode == modeMixed {
		// Only the legacy Secure-Join shape is of interest here: what
		// Delta Chat cores write on its one text part (before 2.x also a
		// Message-ID, before 1.152 quoted-printable and format=flowed).
		j.partOK = mt == "text/plain" && !f.other && len(f.desc) == 0 && len(f.disp) == 0 &&
			onlyParams(params, "charset", "format", "delsp") && optToken(params, "charset", 16) &&
			oneOf(params, "format", "flowed", "fixed") && oneOf(params, "delsp", "yes", "no") &&
			(len(f.cte) == 0 || len(f.cte) == 1 && soleTextEncoding(f.cte[0])) &&
			(len(f.msgID) == 0 || len(f.msgID) == 1 && mimescan.MsgID(f.msgID[0]))
		if !j.partOK {
			j.done = true // cannot be a sole text part; nothing else to learn
		}
		return
	}
	if !encryptedPartHeader(f, params) {
		j.fail(ErrPartHeader)
		return
	}
	want, fail := "application/pgp-encrypted", ErrVersionPart
	if j.mp.Part == 2 {
		want, fail = "application/octet-stream", ErrDataPart
	}
	j.partOK = mt == want && mimescan.IdentityEncoding(f.cte)
	if !j.partOK {
		j.fail(fail)
	}
}

// soleTextEncoding reports whether a Secure-Join text part's transfer
// encoding is one cores write: 7bit, or quoted-printable (before 1.152).
// The body is compared undecoded, so quoted-printable that encodes
// anything gives a body that does not match.
func soleTextEncoding(cte string) bool {
	return strings.EqualFold(cte, "7bit") || strings.EqualFold(cte, "quoted-printable")
}

// encryptedPartHeader reports whether a part header of an encrypted
// message holds only the fields and parameters OpenPGP clients write
// there, each once and in a fixed or token shape, so that no text rides
// along in them.
func encryptedPartHeader(f partFields, params map[string]string) bool {
	if f.other || len(f.msgID) > 0 || len(f.cte) > 1 || len(f.desc) > 1 || len(f.disp) > 1 {
		return false
	}
	if !onlyParams(params, "charset", "name") || !optToken(params, "charset", 16) || !optToken(params, "name", 32) {
		return false
	}
	if len(f.desc) == 1 && !partDescriptions[strings.ToLower(f.desc[0])] {
		return false
	}
	if len(f.disp) == 1 {
		d, dp, err := mimescan.ParseContentType(f.disp[0])
		if err != nil || (d != "inline" && d != "attachment") || !onlyParams(dp, "filename") || !optToken(dp, "filename", 32) {
			return false
		}
	}
	return true
}

// onlyParams reports whether every parameter is one of names.
func onlyParams(params map[string]string, names ...string) bool {
	n := 0
	for _, name := range names {
		if _, ok := params[name]; ok {
			n++
		}
	}
	return n == len(params)
}

// oneOf reports whether params has no parameter name or one of values
// (case-insensitively).
func oneOf(params map[string]string, name string, values ...string) bool {
	v, ok := params[name]
	if !ok {
		return true
	}
	for _, want := range values {
		if strings.EqualFold(v, want) {
			return true
		}
	}
	return false
}

// optToken reports whether params has no parameter name or a Token of at
// most max bytes.
func optToken(params map[string]string, name string, max int) bool {
	v, ok := params[name]
	return !ok || mimescan.Token(v, max)
}

// partLine handles a line of a part body.
func (j *Judge) partLine(l []byte) {
	if j.mode == modeEncrypted && j.mp.Part == 2 {
		if err := j.armor.line(l); err != nil {
			j.fail(err)
		}
		return
	}
	limit := MaxSoleText
	if j.mode == modeEncrypted {
		limit = maxVersionBody
	}
	if len(j.text)+len(l) > limit+2 { // +2: the CRLF before the delimiter is not content
		if j.mode == modeEncrypted {
			j.fail(ErrVersionPart)
		} else {
			j.done = true
		}
		return
	}
	j.text = append(j.text, l...)
}

// endPart finishes part n (from 1) at the delimiter after it; 0 is none.
func (j *Judge) endPart(n int) {
	if j.mode != modeEncrypted {
		return
	}
	switch n {
	case 1:
		if string(bytes.TrimSpace(j.text)) != "Version: 1" {
			j.fail(ErrVersionPart)
		}
	case 2:
		if err := j.armor.finish(); err != nil {
			j.fail(err)
		}
	}
}

// Close returns the verdict on everything written since Reset.
func (j *Judge) Close() Result {
	if rest := j.lines.Rest(); !j.done && len(rest) > 0 {
		// The body did not end with a line terminator.
		j.line(rest)
	}
	r := j.res
	switch j.mode {
	case modeNone:
		return r
	case modeEncrypted:
		switch {
		case j.err != nil:
			r.Encrypted = j.err
		case !j.mp.Ended():
			r.Encrypted = ErrUnterminated
		case j.mp.Part != 2:
			r.Encrypted = ErrPartCount
		}
		r.ArmorHeaders = j.armor.headers
	case modeMixed:
		r.Encrypted = ErrNotEncryptedType
		if j.err == nil && !j.done && j.mp.Ended() && j.mp.Part == 1 && j.partOK && !j.mp.EdgeText {
			r.SoleText = string(bytes.TrimSpace(j.text))
		}
	}
	return r
}

// Params are the top-level Content-Type parameters, known from Reset on.
func (j *Judge) Params() map[string]string { return j.res.Params }

// MediaType is the lower-case top-level media type, known from Reset on.
func (j *Judge) MediaType() string { return j.res.MediaType }

// Size is the number of body bytes written so far.
func (j *Judge) Size() int64 { return j.res.Size }
