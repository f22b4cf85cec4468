package mailpolicy

import (
	"bytes"
	"fmt"
	"strings"
)

// Apply returns msg with the header changes of an accepting verdict made
// as Postfix makes a milter's: SMFIR_CHGHEADER edits the Index-th field of
// that name (counted case-insensitively; an empty value deletes it),
// SMFIR_ADDHEADER appends. Lines end in LF. It shows what is stored or
// relayed; the check tool prints it.
func Apply(msg []byte, v *Verdict) ([]byte, error) {
	msg = bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	head, body, _ := bytes.Cut(msg, []byte("\n\n"))
	var fields []string
	for _, l := range strings.Split(string(head), "\n") {
		if (strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t")) && len(fields) > 0 {
			fields[len(fields)-1] += "\n" + l
			continue
		}
		fields = append(fields, l)
	}
	for _, c := range v.Changes {
		n := 0
		for i, f := range fields {
			name, _, _ := strings.Cut(f, ":")
			if !strings.EqualFold(name, c.Name) {
				continue
			}
			if n++; n != c.Index {
				continue
			}
			if c.Value == "" {
				fields = append(fields[:i], fields[i+1:]...)
			} else {
				fields[i] = name + ": " + c.Value
			}
			break
		}
		if n < c.Index {
			return nil, fmt.Errorf("change of %s[%d]: no such field", c.Name, c.Index)
		}
	}
	for _, f := range v.Add {
		fields = append(fields, f.Name+": "+f.Value)
	}
	return []byte(strings.Join(fields, "\n") + "\n\n" + string(body)), nil
}

// Readable counts the bytes of a message, as Apply returns it, that a
// person could read: everything but the base64 of armored OpenPGP data and
// of Autocrypt keys, which is not text. It is the measure of the readable
// text budget (HeaderBudget and the others).
func Readable(msg []byte) int {
	head, body, _ := bytes.Cut(msg, []byte("\n\n"))
	n := 0
	inKey := false // in the continuation lines of an Autocrypt field's keydata
	for _, l := range strings.Split(string(head), "\n") {
		switch {
		case strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t"):
			if inKey {
				continue
			}
		case strings.HasPrefix(strings.ToLower(l), "autocrypt:"):
			before, _, found := strings.Cut(l, "keydata=")
			l, inKey = before, found
		default:
			inKey = false
		}
		n += len(l)
	}
	inArmor := false
	for _, l := range strings.Split(string(body), "\n") {
		l = strings.TrimRight(l, "\r")
		switch {
		case l == "-----BEGIN PGP MESSAGE-----":
			inArmor = true
		case l == "-----END PGP MESSAGE-----":
			inArmor = false
		case inArmor && !strings.Contains(l, ": ") && l != "":
			continue // base64
		}
		n += len(l)
	}
	return n
}
