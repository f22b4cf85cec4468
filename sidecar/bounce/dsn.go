package bounce

import (
	"bytes"

	"chatmail.dev/sidecar/mimescan"
)

// Delivery-status fields (RFC 3464 2.2, 2.3) that this package knows. Each
// has a bit in a block's seen mask.
type fieldInfo struct {
	name      string
	recipient bool // a per-recipient field, else per-message
	typed     bool // value is "type ; text" (RFC 3464 2.1.2: mta-name-type, address-type, diagnostic-type)
	required  bool // must appear in its block
}

var fields = [...]fieldInfo{
	{name: "Original-Envelope-Id"},
	{name: "Reporting-MTA", typed: true, required: true},
	{name: "DSN-Gateway", typed: true},
	{name: "Received-From-MTA", typed: true},
	{name: "Arrival-Date"},
	{name: "Original-Recipient", recipient: true, typed: true},
	{name: "Final-Recipient", recipient: true, typed: true, required: true},
	{name: "Action", recipient: true, required: true},
	{name: "Status", recipient: true, required: true},
	{name: "Remote-MTA", recipient: true, typed: true},
	{name: "Diagnostic-Code", recipient: true, typed: true},
	{name: "Last-Attempt-Date", recipient: true},
	{name: "Final-Log-ID", recipient: true},
	{name: "Will-Retry-Until", recipient: true},
}

const (
	fieldAction = 7
	fieldStatus = 8
	fieldExt    = -1 // an "X-" extension field
)

// Fields that must not repeat in a block: parsers would disagree on which
// one counts. Remote-MTA may repeat (Exim's DSN-info option writes a second
// one with the IP address); Diagnostic-Code and the dates are only text.
const uniqueMask = 1<<1 | 1<<5 | 1<<6 | 1<<fieldAction | 1<<fieldStatus

// dsn parses a delivery-status body line by line: a per-message block, then
// per-recipient blocks, separated by blank lines (RFC 3464 2.1).
type dsn struct {
	blocks   int    // blocks started, the per-message block included
	inBlock  bool   // a block is open (no blank line since its last field)
	seen     uint32 // fields seen in the open block
	name     []byte // the open field, if any
	value    []byte // its value so far, unfolded
	hasField bool
}

func (d *dsn) reset() {
	*d = dsn{name: d.name[:0], value: d.value[:0]}
}

// line handles one line of the body, without its terminator.
func (d *dsn) line(l []byte) error {
	for _, c := range l {
		if c < ' ' && c != '\t' || c == 0x7f {
			return ErrStatusFields
		}
	}
	if len(l) == 0 {
		if !d.inBlock {
			if d.blocks == 0 {
				return ErrStatusFields // the body starts with a blank line
			}
			return nil // more blank lines between blocks or at the end
		}
		return d.endBlock()
	}
	if l[0] == ' ' || l[0] == '\t' {
		t := bytes.TrimSpace(l)
		if !d.hasField || len(t) == 0 {
			return ErrStatusFields // no field to continue, or a blank-looking line
		}
		if len(d.name)+2+len(d.value)+1+len(t) > MaxStatusField {
			return ErrStatusFields
		}
		d.value = append(append(d.value, ' '), t...)
		return nil
	}
	if err := d.endField(); err != nil {
		return err
	}
	k, v, ok := bytes.Cut(l, []byte(":"))
	if !ok || !mimescan.FieldName(k) || len(l) > MaxStatusField {
		return ErrStatusFields
	}
	if !d.inBlock {
		d.inBlock = true
		d.blocks++
		d.seen = 0
	}
	d.name = append(d.name[:0], k...)
	d.value = append(d.value[:0], bytes.TrimSpace(v)...)
	d.hasField = true
	return nil
}

// endField checks the open field, if any.
func (d *dsn) endField() error {
	if !d.hasField {
		return nil
	}
	d.hasField = false
	recipient := d.blocks > 1
	idx := fieldExt
	for i := range fields {
		if equalFold(d.name, fields[i].name) {
			idx = i
			break
		}
	}
	v := d.value
	if len(v) == 0 {
		return ErrStatusFields
	}
	if idx == fieldExt {
		// RFC 3464 2.4: extension fields not registered start with "X-".
		// Postfix writes X-<mail_name>-Queue-ID and X-<mail_name>-Sender,
		// Sendmail X-Actual-Recipient, Exim X-Exim-Diagnostic, Microsoft
		// X-Display-Name, Gmail X-Original-Message-ID.
		if len(d.name) < 3 || !equalFold(d.name[:2], "X-") {
			return ErrStatusFields
		}
		return nil
	}
	f := fields[idx]
	if f.recipient != recipient {
		return ErrStatusFields
	}
	bit := uint32(1) << idx
	if d.seen&bit != 0 && uniqueMask&bit != 0 {
		return ErrStatusFields
	}
	d.seen |= bit
	switch {
	case f.typed:
		if !typedValue(v) {
			return ErrStatusFields
		}
	case idx == fieldAction:
		if !action(v) {
			return ErrStatusFields
		}
	case idx == fieldStatus:
		if !statusValue(v) {
			return ErrStatusFields
		}
	}
	return nil
}

// endBlock checks the open block at a blank line or the end of the body.
func (d *dsn) endBlock() error {
	if err := d.endField(); err != nil {
		return err
	}
	d.inBlock = false
	var need uint32
	for i, f := range fields {
		if f.required && f.recipient == (d.blocks > 1) {
			need |= 1 << i
		}
	}
	if d.seen&need != need {
		return ErrStatusFields
	}
	return nil
}

// finish checks the body as a whole when the part ends.
func (d *dsn) finish() error {
	if d.inBlock {
		if err := d.endBlock(); err != nil {
			return err
		}
	}
	if d.blocks < 2 {
		return ErrStatusFields // no per-recipient block
	}
	return nil
}

// typedValue reports whether v is "type ; text": a type of letters,
// digits and '-', then ';', then non-empty text.
func typedValue(v []byte) bool {
	t, rest, ok := bytes.Cut(v, []byte(";"))
	t = bytes.TrimSpace(t)
	if !ok || len(t) == 0 || len(bytes.TrimSpace(rest)) == 0 {
		return false
	}
	for _, c := range t {
		if !isAlnum(c) && c != '-' {
			return false
		}
	}
	return true
}

// action reports whether v is an RFC 3464 2.3.3 action-value.
func action(v []byte) bool {
	for _, a := range [...]string{"failed", "delayed", "delivered", "relayed", "expanded"} {
		if equalFold(v, a) {
			return true
		}
	}
	return false
}

// statusValue reports whether v is an RFC 3463 status code (class 2, 4 or
// 5, then subject and detail of 1 to 3 digits), optionally followed by a
// parenthesised comment as in RFC 3464's own example "5.0.0 (permanent
// failure)".
func statusValue(v []byte) bool {
	if len(v) < 5 || (v[0] != '2' && v[0] != '4' && v[0] != '5') || v[1] != '.' {
		return false
	}
	i := 2
	for part := 0; part < 2; part++ {
		n := 0
		for i < len(v) && '0' <= v[i] && v[i] <= '9' {
			i++
			n++
		}
		if n < 1 || n > 3 {
			return false
		}
		if part == 0 {
			if i >= len(v) || v[i] != '.' {
				return false
			}
			i++
		}
	}
	rest := bytes.TrimLeft(v[i:], " \t")
	if len(rest) == 0 {
		return true
	}
	return i < len(v) && (v[i] == ' ' || v[i] == '\t') &&
		rest[0] == '(' && rest[len(rest)-1] == ')' &&
		bytes.IndexByte(rest[1:len(rest)-1], '(') < 0 && bytes.IndexByte(rest[1:len(rest)-1], ')') < 0
}
