package bounce

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"chatmail.dev/sidecar/mimescan"
	"chatmail.dev/sidecar/pgpmime"
)

// Limits. Together they bound the memory of a Judge and the readable text a
// passing bounce can carry.
const (
	// MaxLine is the longest line, terminator included (RFC 5322 2.1.1:
	// 998 characters and CRLF), anywhere in the body, the returned
	// message included.
	MaxLine = pgpmime.MaxLine
	// MaxPreamble bounds the preamble and, separately, the epilogue.
	// Postfix writes "This is a MIME-encapsulated message." there.
	MaxPreamble = 256
	// MaxPartHeader bounds the header section of each report part.
	MaxPartHeader = 1024
	// MaxText bounds the body of the human-readable part in octets as
	// transmitted. The allowed encodings (7bit, 8bit, quoted-printable)
	// never decode to more octets than they take, so this bounds the
	// decoded text too.
	MaxText = 4096
	// MaxStatus bounds the body of the message/delivery-status part.
	MaxStatus = 4096
	// MaxStatusField bounds one delivery-status field, unfolded, name
	// included.
	MaxStatusField = 1000
	// MaxReturnedHeader bounds the returned header section: the body of a
	// text/rfc822-headers part, or the header section of a message/rfc822
	// part.
	MaxReturnedHeader = 8192
	// MaxTotal bounds all body octets except the body of a returned
	// message/rfc822 part: preamble, delimiters, part headers, the three
	// part bodies, epilogue.
	MaxTotal = 16384
	// MaxReadable is the most readable text a passing bounce carries
	// outside the body of a returned message: everything counted by
	// MaxTotal may be free text. The body of a returned message passes
	// pgpmime, so it adds only what pgpmime lets an encrypted message
	// carry beside its ciphertext (its preamble, epilogue, part headers,
	// version part and armor headers).
	MaxReadable = MaxTotal
)

// Reasons a body is not an acceptable bounce. They are for logs and tests.
var (
	ErrContentType      = errors.New("bounce: Content-Type missing, repeated or malformed")
	ErrReportType       = errors.New("bounce: top-level type is not multipart/report; report-type=delivery-status")
	ErrTransferEncoding = errors.New("bounce: top-level transfer encoding is not an identity encoding")
	ErrLine             = errors.New("bounce: line too long, or holds NUL or a bare CR")
	ErrDelimiter        = mimescan.ErrDelimiter
	ErrPreamble         = mimescan.ErrEdge
	ErrPartHeader       = mimescan.ErrPartHeader
	ErrPartCount        = errors.New("bounce: not two or three parts")
	ErrTextPart         = errors.New("bounce: first part is not text/plain in 7bit, 8bit or quoted-printable")
	ErrTextSize         = errors.New("bounce: first part too long")
	ErrStatusPart       = errors.New("bounce: second part is not message/delivery-status")
	ErrStatusFields     = errors.New("bounce: delivery-status body is not RFC 3464 fields")
	ErrReturnedPart     = errors.New("bounce: third part is not text/rfc822-headers or message/rfc822")
	ErrReturnedHeader   = errors.New("bounce: returned header section too long or malformed")
	ErrReturnedBody     = errors.New("bounce: returned message is not encrypted")
	ErrTooLarge         = errors.New("bounce: report too large")
	ErrUnterminated     = errors.New("bounce: multipart body has no close delimiter")
)

type kind uint8

const (
	kText    kind = iota // part 1: text/plain
	kStatus              // part 2: message/delivery-status
	kHeaders             // part 3: text/rfc822-headers
	kMessage             // part 3: message/rfc822
)

// Judge consumes the body of a message with a multipart/report top-level
// type and judges whether it has the shape of a delivery status
// notification as MTAs write them (see the package documentation). Its
// memory use is fixed whatever the body size. Use NewJudge, then Reset for
// each message.
type Judge struct {
	err  error // first reason found; once set, Write only counts
	done bool  // the verdict cannot change any more

	boundary []byte // "--" and the boundary
	lines    mimescan.Lines

	mp        mimescan.Multipart
	kind      kind
	total     int    // bytes counted against MaxTotal
	size      int64  // all body bytes written
	buf       []byte // returned header section
	bodyBytes int    // bytes of the current part body
	lastEOL   int    // terminator length of the last body line
	inBody    bool   // kMessage: past the returned header section

	dsn   dsn
	inner *pgpmime.Judge
}

// NewJudge returns a judge; until Reset it judges a body without
// Content-Type (ErrContentType).
func NewJudge() *Judge {
	j := &Judge{
		buf:   make([]byte, 0, MaxReturnedHeader),
		inner: pgpmime.NewJudge(nil, nil),
	}
	j.mp.Header = make([]byte, 0, MaxPartHeader)
	j.Reset(nil, nil)
	return j
}

// Reset prepares j for a new message, keeping its buffers. contentTypes
// holds every top-level Content-Type field value (normally one),
// transferEncodings every top-level Content-Transfer-Encoding value, as
// pgpmime.NewJudge takes them.
func (j *Judge) Reset(contentTypes, transferEncodings []string) {
	*j = Judge{lines: j.lines, mp: j.mp, buf: j.buf[:0], boundary: j.boundary[:0], inner: j.inner,
		dsn: dsn{name: j.dsn.name[:0], value: j.dsn.value[:0]}}
	j.lines.Reset()
	if len(contentTypes) != 1 {
		j.fail(ErrContentType)
		return
	}
	mt, params, err := mimescan.ParseContentType(contentTypes[0])
	if err != nil {
		j.fail(ErrContentType)
		return
	}
	if mt != "multipart/report" || !strings.EqualFold(params["report-type"], "delivery-status") {
		j.fail(ErrReportType)
		return
	}
	if len(params) != 2 { // report-type and boundary, nothing else
		j.fail(ErrContentType)
		return
	}
	if !mimescan.IdentityEncoding(transferEncodings) {
		j.fail(ErrTransferEncoding)
		return
	}
	b := params["boundary"]
	if !mimescan.ValidBoundary(b) {
		j.fail(ErrContentType)
		return
	}
	j.boundary = append(append(j.boundary, "--"...), b...)
	j.mp.Reset(j.boundary, MaxPreamble, MaxPartHeader)
}

// Size is the number of body bytes written since Reset.
func (j *Judge) Size() int64 { return j.size }

// Write consumes the next chunk of the body. It never fails.
func (j *Judge) Write(p []byte) (int, error) {
	j.size += int64(len(p))
	for rest := p; !j.done; {
		l, r, ok, overlong := j.lines.Next(rest)
		if overlong {
			j.fail(ErrLine)
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

// Close returns nil when everything written since Reset is an acceptable
// bounce body, and otherwise the reason it is not; the error wraps one of
// the Err values (ErrReturnedBody also wraps the pgpmime reason).
func (j *Judge) Close() error {
	if rest := j.lines.Rest(); !j.done && len(rest) > 0 {
		// The body did not end with a line terminator.
		j.line(rest)
	}
	switch {
	case j.err != nil:
		return j.err
	case !j.mp.Ended():
		return ErrUnterminated
	case j.mp.Part < 2:
		return ErrPartCount
	}
	return nil
}

// line handles one complete line, terminator included.
func (j *Judge) line(l []byte) {
	body := mimescan.TrimEOL(l)
	if bytes.IndexByte(body, '\r') >= 0 || bytes.IndexByte(body, 0) >= 0 {
		// Parsers disagree on whether a bare CR ends a line.
		j.fail(ErrLine)
		return
	}
	ev := j.mp.Line(l)
	if ev == mimescan.Failed {
		j.fail(j.mp.Err)
		return
	}
	if !(ev == mimescan.BodyLine && j.kind == kMessage && j.inBody) {
		j.total += len(l)
		if j.total > MaxTotal {
			j.fail(ErrTooLarge)
			return
		}
	}
	switch ev {
	case mimescan.PartBegins:
		j.endPart(j.mp.Part - 1)
		if j.done {
			return
		}
		if j.mp.Part > 3 {
			j.fail(ErrPartCount)
			return
		}
		j.buf = j.buf[:0]
	case mimescan.Closed:
		j.endPart(j.mp.Part)
	case mimescan.HeaderEnds:
		j.beginPart()
	case mimescan.BodyLine:
		j.bodyLine(l, body)
	}
}

// beginPart checks the collected part header against the part's position.
func (j *Judge) beginPart() {
	j.bodyBytes, j.lastEOL, j.inBody = 0, 0, false
	var ct, cte, desc, disp int
	var ctv, ctev string
	ok := mimescan.EachField(j.mp.Header, func(name, value []byte) bool {
		switch {
		case equalFold(name, "Content-Type"):
			ct++
			ctv = string(value)
		case equalFold(name, "Content-Transfer-Encoding"):
			cte++
			ctev = string(value)
		case equalFold(name, "Content-Description"):
			desc++
		case equalFold(name, "Content-Disposition"):
			disp++
		default:
			return false
		}
		return true
	})
	// Sendmail writes its text part without any header field: RFC 2045
	// 5.2 makes that text/plain; charset=us-ascii. Other parts need one.
	if !ok || ct > 1 || (ct == 0 && j.mp.Part != 1) || cte > 1 || desc > 1 || disp > 1 {
		j.fail(ErrPartHeader)
		return
	}
	mt, params := "text/plain", map[string]string(nil)
	if ct == 1 {
		var err error
		if mt, params, err = mimescan.ParseContentType(ctv); err != nil {
			j.fail(ErrPartHeader)
			return
		}
	}
	enc := strings.ToLower(strings.TrimSpace(ctev))
	switch j.mp.Part {
	case 1:
		j.kind = kText
		if mt != "text/plain" || !onlyParams(params, "charset", "format", "delsp") ||
			(enc != "" && enc != "7bit" && enc != "8bit" && enc != "quoted-printable") {
			j.fail(ErrTextPart)
		}
	case 2:
		j.kind = kStatus
		if (mt != "message/delivery-status" && mt != "message/global-delivery-status") ||
			len(params) != 0 || (enc != "" && enc != "7bit" && enc != "8bit") {
			j.fail(ErrStatusPart)
		}
		j.dsn.reset()
	default:
		switch mt {
		case "text/rfc822-headers", "message/global-headers":
			j.kind = kHeaders
		case "message/rfc822", "message/global":
			j.kind = kMessage
		default:
			j.fail(ErrReturnedPart)
			return
		}
		if !onlyParams(params, "charset") || (j.kind == kMessage && len(params) != 0) ||
			(enc != "" && enc != "7bit" && enc != "8bit" && enc != "binary") {
			j.fail(ErrReturnedPart)
		}
	}
}

func onlyParams(params map[string]string, names ...string) bool {
	n := 0
	for _, name := range names {
		if _, ok := params[name]; ok {
			n++
		}
	}
	return n == len(params)
}

// bodyLine handles a line of a part body; body is l without its terminator.
func (j *Judge) bodyLine(l, body []byte) {
	// The terminator of the last line before a delimiter belongs to the
	// delimiter (RFC 2046 5.1.1): it counts only once another line follows.
	j.bodyBytes += j.lastEOL + len(body)
	j.lastEOL = len(l) - len(body)
	switch j.kind {
	case kText:
		if j.bodyBytes > MaxText {
			j.fail(ErrTextSize)
		}
	case kStatus:
		if j.bodyBytes > MaxStatus {
			j.fail(ErrStatusFields)
			return
		}
		if err := j.dsn.line(body); err != nil {
			j.fail(err)
		}
	case kHeaders:
		j.headerLine(l, body)
	case kMessage:
		if j.inBody {
			j.inner.Write(l)
			return
		}
		j.headerLine(l, body)
		if j.inBody {
			j.startInner()
		}
	}
}

// headerLine collects a line of a returned header section. A blank line
// ends the section; after it a text/rfc822-headers body may hold only
// blank lines.
func (j *Judge) headerLine(l, body []byte) {
	if len(body) == 0 {
		if len(j.buf) == 0 && j.kind == kMessage {
			j.fail(ErrReturnedHeader) // no header section at all
			return
		}
		j.inBody = true
		return
	}
	if j.inBody || len(j.buf)+len(l) > MaxReturnedHeader {
		j.fail(ErrReturnedHeader)
		return
	}
	for _, c := range body {
		if c < ' ' && c != '\t' || c == 0x7f {
			j.fail(ErrReturnedHeader)
			return
		}
	}
	j.buf = append(j.buf, l...)
}

// startInner parses the returned message's header section and starts
// judging its body.
func (j *Judge) startInner() {
	var ct, cte []string
	ok := mimescan.EachField(j.buf, func(name, value []byte) bool {
		switch {
		case equalFold(name, "Content-Type"):
			ct = append(ct, string(value))
		case equalFold(name, "Content-Transfer-Encoding"):
			cte = append(cte, string(value))
		}
		return true
	})
	if !ok {
		j.fail(ErrReturnedHeader)
		return
	}
	j.inner.Reset(ct, cte)
}

// endPart finishes part n (from 1) at the delimiter after it; 0 is none.
func (j *Judge) endPart(n int) {
	if n == 0 {
		return
	}
	switch j.kind {
	case kStatus:
		if err := j.dsn.finish(); err != nil {
			j.fail(err)
		}
	case kHeaders:
		if len(j.buf) == 0 || !mimescan.EachField(j.buf, func(_, _ []byte) bool { return true }) {
			j.fail(ErrReturnedHeader)
		}
	case kMessage:
		if !j.inBody {
			j.fail(ErrReturnedHeader)
			return
		}
		if res := j.inner.Close(); res.Encrypted != nil {
			j.fail(fmt.Errorf("%w: %w", ErrReturnedBody, res.Encrypted))
		}
	}
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
