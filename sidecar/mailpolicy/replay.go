package mailpolicy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ChunkSize is the largest body chunk a milter receives.
const ChunkSize = 64 << 10

// Replay runs the header and body stages of t on a raw message, the way
// Postfix would present it to a milter that asked for SMFIP_HDR_LEADSPC:
// header fields one by one (the value as written after the colon, folded
// lines joined by LF), then the
// body in chunks of at most ChunkSize with CRLF line endings. A message
// with LF line endings is converted, as Postfix converts it.
func Replay(ctx context.Context, t *Txn, r io.Reader) (*Verdict, error) {
	br := bufio.NewReaderSize(r, ChunkSize)
	var name string
	// The value grows by a line at a time: a Builder, so that a field
	// folded over many lines costs its length, not its length squared.
	var value strings.Builder
	var have bool
	lines := 0
	flush := func() {
		if have {
			t.Header(name, value.String())
		}
		have = false
		value.Reset()
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		l := strings.TrimRight(line, "\r\n")
		lines++
		if l == "" {
			break // end of header (or of input)
		}
		if l[0] == ' ' || l[0] == '\t' {
			if !have {
				return nil, fmt.Errorf("header starts with a continuation line")
			}
			value.WriteByte('\n')
			value.WriteString(l)
			if value.Len() > maxHeader {
				// Hand it over in pieces: the transaction counts every
				// byte, keeps none past its limit and answers as the
				// milter does.
				flush()
				have = true
			}
		} else {
			flush()
			n, v, ok := strings.Cut(l, ":")
			// Space before the colon is allowed (RFC 5322 4.5.3 obsolete
			// syntax, and Postfix takes it); the header policy refuses it.
			if !ok || strings.TrimRight(n, " \t") == "" || strings.ContainsAny(strings.TrimRight(n, " \t"), " \t") {
				// The line's number, not its text: a header names people.
				return nil, fmt.Errorf("malformed header line %d", lines)
			}
			name, have = n, true
			value.WriteString(v)
		}
		if errors.Is(err, io.EOF) {
			break
		}
	}
	flush()
	if v := t.EndHeaders(); v != nil {
		return v, nil
	}
	buf := make([]byte, ChunkSize/2)
	out := make([]byte, 0, ChunkSize)
	prevCR := false
	for {
		n, err := br.Read(buf)
		if n > 0 {
			out = toCRLF(out[:0], buf[:n], &prevCR)
			t.Body(out)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	return t.End(ctx), nil
}

// toCRLF appends p to dst with every bare LF turned into CRLF; prevCR
// carries whether the previous chunk ended in CR.
func toCRLF(dst, p []byte, prevCR *bool) []byte {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			dst = append(dst, p...)
			*prevCR = p[len(p)-1] == '\r'
			return dst
		}
		cr := (i > 0 && p[i-1] == '\r') || (i == 0 && *prevCR)
		dst = append(dst, p[:i]...)
		if !cr {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
		p = p[i+1:]
		*prevCR = false
	}
	return dst
}
