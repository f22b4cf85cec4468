package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// field is one header field as written, unfolded.
type field struct{ name, value string }

// entity is a message or a MIME part.
type entity struct {
	fields []field
	body   []byte
	parts  []*entity
	// mediaType and params are from Content-Type, "" if absent.
	mediaType string
	params    map[string]string
	ctErr     error
}

func (e *entity) get(name string) string {
	for _, f := range e.fields {
		if strings.EqualFold(f.name, name) {
			return f.value
		}
	}
	return ""
}

// parseEntity splits raw into header fields and body, and a multipart
// body into its parts, recursively. It keeps the fields' order and case.
func parseEntity(raw []byte) (*entity, error) {
	raw = bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))
	head, body, ok := bytes.Cut(raw, []byte("\n\n"))
	if !ok {
		if bytes.HasPrefix(raw, []byte("\n")) {
			head, body = nil, raw[1:]
		} else {
			head, body = raw, nil
		}
	}
	e := &entity{body: body}
	for line := range strings.SplitSeq(string(head), "\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(e.fields) == 0 {
				return nil, errors.New("header starts with a continuation line")
			}
			e.fields[len(e.fields)-1].value += " " + strings.TrimSpace(line)
			continue
		}
		n, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("malformed header line %q", line)
		}
		e.fields = append(e.fields, field{n, strings.TrimSpace(v)})
	}
	if ct := e.get("Content-Type"); ct != "" {
		e.mediaType, e.params, e.ctErr = mime.ParseMediaType(ct)
	}
	if strings.HasPrefix(e.mediaType, "multipart/") && e.params["boundary"] != "" {
		for _, p := range splitMultipart(body, e.params["boundary"]) {
			pe, err := parseEntity(p)
			if err != nil {
				return nil, err
			}
			e.parts = append(e.parts, pe)
		}
	}
	return e, nil
}

// splitMultipart returns the parts of a multipart body (LF line ends).
func splitMultipart(body []byte, boundary string) [][]byte {
	var parts [][]byte
	var cur []string
	in := false
	for line := range strings.SplitSeq(string(body), "\n") {
		t := strings.TrimRight(line, " \t")
		if t == "--"+boundary || t == "--"+boundary+"--" {
			if in {
				parts = append(parts, []byte(strings.Join(cur, "\n")))
			}
			cur, in = nil, t == "--"+boundary
			continue
		}
		if in {
			cur = append(cur, line)
		}
	}
	return parts
}

// armor is what an ASCII-armored PGP MESSAGE carries.
type armor struct {
	headers []string
	packets []string
	err     error
}

func parseArmor(body []byte) *armor {
	s := strings.ReplaceAll(string(body), "\r\n", "\n")
	i := strings.Index(s, "-----BEGIN PGP MESSAGE-----")
	if i < 0 {
		return nil
	}
	a := &armor{}
	lines := strings.Split(s[i:], "\n")[1:]
	k := 0
	for ; k < len(lines) && strings.TrimSpace(lines[k]) != ""; k++ {
		a.headers = append(a.headers, lines[k])
	}
	var b64 strings.Builder
	for k++; k < len(lines); k++ {
		l := strings.TrimSpace(lines[k])
		if strings.HasPrefix(l, "-----END") || strings.HasPrefix(l, "=") && len(l) == 5 {
			break
		}
		b64.WriteString(l)
	}
	data, err := base64.StdEncoding.DecodeString(b64.String())
	if err != nil {
		a.err = err
		return a
	}
	a.packets, a.err = packets(data)
	return a
}

var packetNames = map[int]string{
	1: "PKESK", 2: "Sig", 3: "SKESK", 4: "OPS", 5: "SecKey", 6: "PubKey", 7: "SecSubkey",
	8: "Compressed", 9: "SED", 10: "Marker", 11: "Literal", 12: "Trust", 13: "UserID",
	14: "PubSubkey", 17: "UserAttr", 18: "SEIPD", 19: "MDC", 20: "AEAD", 21: "Padding",
}

// packets lists the top-level OpenPGP packets of data as
// "NAME(tag) vN, SIZE B".
func packets(data []byte) ([]string, error) {
	var out []string
	for len(data) > 0 {
		hdr := data[0]
		if hdr&0x80 == 0 {
			return out, fmt.Errorf("byte %#x is not a packet header", hdr)
		}
		var tag, size int
		var first byte
		if hdr&0x40 != 0 {
			tag = int(hdr & 0x3f)
			data = data[1:]
			for {
				if len(data) == 0 {
					return out, errors.New("truncated length")
				}
				var n, hl int
				partial := false
				switch l0 := int(data[0]); {
				case l0 < 192:
					n, hl = l0, 1
				case l0 < 224:
					if len(data) < 2 {
						return out, errors.New("truncated length")
					}
					n, hl = (l0-192)<<8+int(data[1])+192, 2
				case l0 == 255:
					if len(data) < 5 {
						return out, errors.New("truncated length")
					}
					n, hl = int(data[1])<<24|int(data[2])<<16|int(data[3])<<8|int(data[4]), 5
				default:
					n, hl, partial = 1<<(l0&0x1f), 1, true
				}
				data = data[hl:]
				if n > len(data) {
					return out, fmt.Errorf("packet tag %d: length %d beyond the data", tag, n)
				}
				if size == 0 && n > 0 {
					first = data[0]
				}
				size += n
				data = data[n:]
				if !partial {
					break
				}
			}
		} else {
			tag = int(hdr>>2) & 0xf
			lt := hdr & 3
			data = data[1:]
			var n, hl int
			switch lt {
			case 0:
				n, hl = int(data[0]), 1
			case 1:
				n, hl = int(data[0])<<8|int(data[1]), 2
			case 2:
				n, hl = int(data[0])<<24|int(data[1])<<16|int(data[2])<<8|int(data[3]), 4
			default:
				n, hl = len(data), 0
			}
			data = data[hl:]
			if n > len(data) {
				return out, fmt.Errorf("packet tag %d: length %d beyond the data", tag, n)
			}
			if n > 0 {
				first = data[0]
			}
			size = n
			data = data[n:]
		}
		name := packetNames[tag]
		if name == "" {
			name = "tag"
		}
		s := fmt.Sprintf("%s(%d)", name, tag)
		switch tag {
		case 1, 2, 3, 4, 5, 6, 7, 14, 18:
			s += fmt.Sprintf(" v%d", first)
		}
		if hdr&0x40 == 0 {
			s += " old-format"
		}
		out = append(out, fmt.Sprintf("%s, %d B", s, size))
	}
	return out, nil
}

// fixture is one parsed fixture file.
type fixture struct {
	version, shape string
	e              *entity
}

func loadFixtures(dir string) ([]fixture, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "dc-*", "*.eml"))
	if err != nil {
		return nil, err
	}
	var out []fixture
	for _, p := range paths {
		raw, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		e, err := parseEntity(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		out = append(out, fixture{
			version: strings.TrimPrefix(filepath.Base(filepath.Dir(p)), "dc-"),
			shape:   strings.TrimSuffix(filepath.Base(p), ".eml"),
			e:       e,
		})
	}
	slices.SortStableFunc(out, func(a, b fixture) int {
		if c := compareVersions(b.version, a.version); c != 0 {
			return c
		}
		return strings.Compare(a.shape, b.shape)
	})
	return out, nil
}

func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := range min(len(as), len(bs)) {
		x, _ := strconv.Atoi(as[i])
		y, _ := strconv.Atoi(bs[i])
		if x != y {
			return x - y
		}
	}
	return len(as) - len(bs)
}

// trim shortens a header value for the inventory.
func trim(name, v string) string {
	if strings.EqualFold(name, "Autocrypt") {
		if i := strings.Index(v, "keydata="); i >= 0 {
			v = v[:i] + "keydata=…"
		}
	}
	if len(v) > 90 {
		v = v[:87] + "…"
	}
	return strings.ReplaceAll(v, "|", `\|`)
}

func writeInventory(w io.Writer, dir string) error {
	fx, err := loadFixtures(dir)
	if err != nil {
		return err
	}
	if len(fx) == 0 {
		return fmt.Errorf("no fixtures under %s/dc-*/", dir)
	}
	var b strings.Builder
	b.WriteString(readmeIntro)

	// Which top-level fields occur, by version.
	var versions []string
	seen := map[string]map[string][]string{} // lower name -> version -> shapes
	names := map[string]string{}             // lower name -> name as written
	for _, f := range fx {
		if !slices.Contains(versions, f.version) {
			versions = append(versions, f.version)
		}
		for _, fl := range f.e.fields {
			l := strings.ToLower(fl.name)
			if seen[l] == nil {
				seen[l] = map[string][]string{}
				names[l] = fl.name
			}
			if !slices.Contains(seen[l][f.version], f.shape) {
				seen[l][f.version] = append(seen[l][f.version], f.shape)
			}
		}
	}
	count := map[string]int{}
	for _, f := range fx {
		count[f.version]++
	}
	b.WriteString("\n## Top-level header fields by version\n\n")
	b.WriteString("How many of the version's fixtures carry the field (of how many); `cleartext` lists the unencrypted fixtures that do.\n\n")
	b.WriteString("| field |")
	for _, v := range versions {
		fmt.Fprintf(&b, " %s |", v)
	}
	b.WriteString(" cleartext |\n|---|")
	for range versions {
		b.WriteString("---|")
	}
	b.WriteString("---|\n")
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range seen {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		fmt.Fprintf(&b, "| `%s` |", names[k])
		for _, v := range versions {
			fmt.Fprintf(&b, " %d/%d |", len(seen[k][v]), count[v])
		}
		var clear []string
		for _, f := range fx {
			if f.e.mediaType != "multipart/encrypted" && f.e.get(names[k]) != "" {
				clear = append(clear, f.version+"/"+f.shape)
			}
		}
		fmt.Fprintf(&b, " %s |\n", strings.Join(clear, ", "))
	}

	b.WriteString("\n## Shapes\n\n")
	b.WriteString("| version | shape | top-level Content-Type | parts | OpenPGP packets |\n|---|---|---|---|---|\n")
	for _, f := range fx {
		var parts []string
		for _, p := range f.e.parts {
			parts = append(parts, p.mediaType)
		}
		pk := ""
		if a := findArmor(f.e); a != nil {
			pk = strings.Join(shortPackets(a.packets), " ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", f.version, f.shape, f.e.mediaType, strings.Join(parts, ", "), pk)
	}

	b.WriteString("\n## Each fixture\n")
	for _, f := range fx {
		fmt.Fprintf(&b, "\n### dc-%s/%s.eml\n\n", f.version, f.shape)
		b.WriteString("Header (in order):\n\n")
		for _, fl := range f.e.fields {
			fmt.Fprintf(&b, "- `%s`: %s\n", fl.name, trim(fl.name, fl.value))
		}
		fmt.Fprintf(&b, "\nContent-Type: `%s`%s\n", f.e.mediaType, paramList(f.e.params))
		writeParts(&b, f.e, "")
	}
	_, err = io.WriteString(w, b.String())
	return err
}

func paramList(p map[string]string) string {
	if len(p) == 0 {
		return ""
	}
	var s []string
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range p {
			if !yield(k) {
				return
			}
		}
	}) {
		v := p[k]
		if k == "boundary" {
			v = fmt.Sprintf("<%d chars>", len(v))
		}
		s = append(s, k+"="+v)
	}
	return "; params: " + strings.Join(s, ", ")
}

func writeParts(b *strings.Builder, e *entity, indent string) {
	for i, p := range e.parts {
		var fs []string
		for _, fl := range p.fields {
			fs = append(fs, fmt.Sprintf("`%s: %s`", fl.name, trim(fl.name, fl.value)))
		}
		fmt.Fprintf(b, "%s- part %d: %s\n", indent, i+1, strings.Join(fs, ", "))
		body := strings.TrimSpace(string(p.body))
		switch a := parseArmor(p.body); {
		case a != nil:
			fmt.Fprintf(b, "%s  - armor headers: %s\n", indent, orNone(a.headers))
			fmt.Fprintf(b, "%s  - packets: %s\n", indent, strings.Join(a.packets, "; "))
			if a.err != nil {
				fmt.Fprintf(b, "%s  - packet parse error: %v\n", indent, a.err)
			}
		case len(p.parts) > 0:
			writeParts(b, p, indent+"  ")
		case len(body) <= 120 && !strings.Contains(body, "\n\n"):
			fmt.Fprintf(b, "%s  - body: %q\n", indent, body)
		default:
			fmt.Fprintf(b, "%s  - body: %d bytes\n", indent, len(p.body))
		}
	}
}

func orNone(h []string) string {
	if len(h) == 0 {
		return "none"
	}
	q := make([]string, len(h))
	for i, s := range h {
		q[i] = "`" + s + "`"
	}
	return strings.Join(q, ", ")
}

func findArmor(e *entity) *armor {
	if len(e.parts) == 0 {
		return parseArmor(e.body)
	}
	for _, p := range e.parts {
		if a := findArmor(p); a != nil {
			return a
		}
	}
	return nil
}

// shortPackets drops the sizes: "PKESK(1) v6, 610 B" -> "PKESK v6".
func shortPackets(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		s, _, _ := strings.Cut(p, ",")
		if j := strings.Index(s, "("); j >= 0 {
			k := strings.Index(s, ")")
			s = s[:j] + s[k+1:]
		}
		out[i] = s
	}
	return out
}

const readmeIntro = `# What Delta Chat clients submit: fixtures and inventory

Every ` + "`dc-<version>/<shape>.eml`" + ` here is one message exactly as a real
Delta Chat core (` + "`deltachat-rpc-server`" + ` from npm
` + "`@deltachat/stdio-rpc-server-linux-x64`" + `) submitted it over SMTP: captured
at submission, before any server added or changed anything (no
Return-Path, Received, Delivered-To or DKIM-Signature), with the CRLF line
ends the client sent. Nothing was edited.

## How they were made, and how to make them again

` + "`integration/cmd/chatmail-capture`" + ` starts a private stack (scripts/stack)
without the milter, so that nothing is refused, and a recording SMTP proxy
(implicit TLS, AUTH PLAIN) that every client uses as its SMTP server; IMAP
goes to the stack. The proxy saves each message and passes it on to the
stack's submission port with the client's own credentials. The tool drives
clients through each action and names every captured message after the
action and the handshake step (by sender, recipient and order). Messages a
step did not expect, such as multi-device sync messages to the sender's
own address, are kept as ` + "`<step>-<sender>-self-<n>`" + ` or
` + "`<step>-<sender>-to-others-<n>`" + `.

As root on Debian 12, from the repository root:

    scripts/install-deps     # 2.62.0, plus 2.33.0 and 1.160.0 under .deltachat/<version>/
    for v in 2.48.0 1.151.3 1.139.3; do   # capture-only versions
        npm install --no-save --prefix .deltachat/$v @deltachat/stdio-rpc-server-linux-x64@$v
    done
    rm -rf sidecar/testdata/clients/dc-*
    cd integration && go run ./cmd/chatmail-capture
    go run ./cmd/chatmail-capture -inventory ../sidecar/testdata/clients > ../sidecar/testdata/clients/README.md

Addresses, keys, dates and Message-IDs differ on every run. npm has these
versions of the core: 1.139.3, 1.142.12, 1.151.3, 1.159.4, 1.160.0, 2.33.0,
2.48.0, 2.57.0, 2.62.0 (no 2.44: the last one before Secure-Join v3, 2.45,
on npm is 2.33.0).

What was driven:

- 2.62.0 (three profiles): Secure-Join v3 one-to-one and group (fresh
  joiner), text both ways, image, file (20 KiB), large file (600 KiB: a
  pre-message and a post-message), reaction, edit, delete for all, group
  create / text / member remove / member add, a message to oneself, a sync
  message (pinning a chat), a broadcast channel joined by QR and a message
  to it, a call offer (` + "`place_outgoing_call`" + `).
- Each older version, between clients of that version: Secure-Join
  one-to-one and group (legacy ` + "`vc-request`/`vg-request`" + ` before 2.45), a
  text both ways, group create and group text.
- 2.62.0 joining the invitations of a 2.33.0 client (no ` + "`v=3`" + `):
  2.62.0's own legacy requests (` + "`dc-2.62.0/securejoin-legacy-*`" + `), and the
  2.33.0 inviter's answers (` + "`dc-2.33.0/from-2.62.0-*`" + `).

Every profile had ` + "`bcc_self=1`" + ` (as on several devices), so most messages
also went to the sender's own address, the legacy requests included
(RCPT TO inviter and self); with the default ` + "`bcc_self=0`" + ` only the
inviter.

## Findings

- Everything except the legacy Secure-Join requests is
  ` + "`multipart/encrypted; protocol=\"application/pgp-encrypted\"`" + ` with exactly
  two parts, ` + "`application/pgp-encrypted`" + ` (body ` + "`Version: 1`" + `) and
  ` + "`application/octet-stream`" + ` holding one armored PGP MESSAGE, with no armor
  headers in any fixture.
- Packets: 2.48 and later ` + "`PKESK v6`" + `… ` + "`SEIPD v2`" + `, or ` + "`SKESK v6 SEIPD v2`" + `
  for the first two Secure-Join v3 steps (` + "`vc-request-pubkey`" + `,
  ` + "`vc-pubkey`" + `) **and for every broadcast-channel message**; 2.33 and
  earlier ` + "`PKESK v3`" + `… ` + "`SEIPD v1`" + `. No compressed, literal or
  signature packet at top level; no partial lengths to worry about beyond
  SEIPD.
- Part headers of the encrypted parts: 2.62 ` + "`Content-Type`" + ` (with
  ` + "`charset=\"utf-8\"`" + `) and ` + "`Content-Transfer-Encoding: 7bit`" + `; 2.48 down to
  1.160 add ` + "`Content-Description`" + `, ` + "`Content-Disposition: inline;\n  filename=\"encrypted.asc\";`" + ` (trailing semicolon) and ` + "`name=\"encrypted.asc\"`" + `;
  1.151 and 1.139 have no ` + "`Content-Transfer-Encoding`" + ` and no charset,
  fields in another order.
- Top-level fields beyond From, To, Subject, Date, Message-ID,
  MIME-Version, Content-Type, Chat-Version: ` + "`Autocrypt`" + ` (outside the
  encryption on every message of 1.160 and older, and on the legacy
  requests of 2.33 and 2.62), ` + "`References`" + `, ` + "`In-Reply-To`" + `,
  ` + "`Auto-Submitted: auto-replied`" + ` / ` + "`auto-generated`" + ` (2.33 and older,
  Secure-Join steps), ` + "`Chat-Is-Post-Message`" + ` (2.62 post-message),
  ` + "`Secure-Join`" + ` and ` + "`Secure-Join-Invitenumber`" + ` (legacy requests only).
  2.x sends ` + "`To: \"hidden-recipients\": ;`" + ` and ` + "`Subject: [...]`" + ` on
  encrypted mail; 1.x sends real ` + "`To`" + ` addresses, 1.139 with display names
  in From and To and ` + "`Subject: ...`" + `.
- The legacy ` + "`vc-request`/`vg-request`" + ` (the only cleartext) is
  ` + "`multipart/mixed`" + ` with one ` + "`text/plain`" + ` part, body
  ` + "`Secure-Join: vc-request`" + ` (or ` + "`vg-request`" + `), in four variants:
  - 2.62 (joining an old invitation): part header ` + "`Content-Type: text/plain;\n    charset=\"utf-8\"`" + `, ` + "`Content-Transfer-Encoding: 7bit`" + `.
  - 2.33 and 1.160: the same plus a part ` + "`Message-ID`" + ` (equal to the
    message's); the top-level ` + "`Content-Type: multipart/mixed; `" + ` line ends in
    a space before the folded boundary.
  - 1.151: part header ` + "`Content-Transfer-Encoding: quoted-printable`" + `,
    ` + "`Message-ID`" + `, ` + "`Content-Type: text/plain; charset=utf-8`" + `; the body is
    followed by an empty line; ` + "`Subject`" + ` is an RFC 2047 encoded word
    (` + "`=?utf-8?q?Message_from_…?=`" + `); ` + "`Autocrypt`" + ` folded before ` + "`keydata=`" + `.
  - 1.139: as 1.151 but ` + "`Content-Type: text/plain; charset=utf-8;\n    format=flowed; delsp=no`" + `, ` + "`From: Display Name <addr>`" + `, ` + "`Subject:\n    Message from <display name>`" + `, boundary of 30 characters.

The rest of this file is generated by ` + "`chatmail-capture -inventory`" + `.
`
