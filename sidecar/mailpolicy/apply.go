package mailpolicy

import (
	"bytes"
	"errors"
	"strings"
)

// Apply returns msg, the message an accepting verdict was given on, as
// it is stored or relayed: the header section the header policy decided
// (the fields kept, as written or with their new values, in their order,
// then the fields of v.Add), then msg's body. Lines end in LF. It is
// built from the policy's own decisions, never by finding fields of msg
// by name again, so that no reader's way of matching names can change
// what is delivered; the MTA, which makes v.Changes by name and index,
// arrives at the same header (the tests check it). The /mxdeliv receiver
// delivers what it returns.
func Apply(msg []byte, v *Verdict) ([]byte, error) {
	if !v.Reply.Accepted() || !v.decided {
		return nil, errors.New("not an accepting verdict of a transaction")
	}
	var b bytes.Buffer
	b.Grow(len(msg))
	for _, f := range v.delivered {
		b.WriteString(f)
		b.WriteByte('\n')
	}
	for _, f := range v.Add {
		b.WriteString(f.Name + ": " + f.Value + "\n")
	}
	b.WriteByte('\n')
	b.Write(bytes.ReplaceAll(body(msg), []byte("\r\n"), []byte("\n")))
	return b.Bytes(), nil
}

// body returns what follows the header section of msg, found as Replay
// finds it: after the first line that is empty but for CR and LF.
func body(msg []byte) []byte {
	for len(msg) > 0 {
		i := bytes.IndexByte(msg, '\n')
		if i < 0 {
			return nil // no body
		}
		line := msg[:i]
		msg = msg[i+1:]
		if len(bytes.TrimRight(line, "\r")) == 0 {
			return msg
		}
	}
	return nil
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
		case len(l) >= len("autocrypt:") && asciiEqualFold(l[:len("autocrypt:")], "autocrypt:"):
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
