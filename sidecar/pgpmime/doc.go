// Package pgpmime judges, while the body streams past, whether a message is
// OpenPGP/MIME as RFC 3156 defines it, and notes the few structural facts
// the policy needs for its cleartext exceptions.
//
// A message is encrypted when all of this holds:
//
//   - the top-level Content-Type is multipart/encrypted with
//     protocol="application/pgp-encrypted", appears once, and the message has
//     an identity transfer encoding (none, 7bit, 8bit or binary);
//   - there are exactly two parts, in order: application/pgp-encrypted whose
//     body, trimmed, is "Version: 1", then application/octet-stream holding
//     exactly one ASCII-armored "PGP MESSAGE"; both parts use an identity
//     transfer encoding and neither is itself multipart;
//   - the armored packets are (PKESK|SKESK)+ SEIPD: at least one session key
//     packet, then exactly one SEIPD packet that runs to the end of the data.
//     PKESK v3 and SKESK v4 go with SEIPD v1, PKESK v6 and SKESK v6 with
//     SEIPD v2 (RFC 9580 5.1, 5.3); mixing generations is refused. Both
//     packet header formats and partial body lengths are understood.
//
// Only packet headers and version octets are read; nothing is decrypted.
// Once the SEIPD header is checked, the rest of its body is only counted, so
// the armor decoder merely validates the base64 alphabet there, which is what
// makes large messages cheap.
//
// Loopholes of the filter this replaces (chatmail filtermail), and what is
// done about them here:
//
//   - multipart/encrypted with only the version part passed: closed, the
//     octet-stream part is required.
//   - a last "=" line was cut off as if it were the CRC line, and data that
//     only parsed after that cut passed: closed. A checksum line is "=" and
//     exactly four base64 characters, directly before the END line; lines
//     "=" or "==" are base64 padding. The checksum may be absent. When present
//     it must be well formed but is not compared: RFC 9580 6.1 says a receiver
//     must not reject on a CRC mismatch, the CRC protects nothing (SEIPD
//     carries its own integrity check) and skipping it keeps the decoder cheap.
//   - zero session key packets before the SEIPD passed: closed, one is needed
//     to decrypt at all.
//   - the preamble and epilogue were unchecked, so any amount of cleartext
//     could ride along: each is now limited to MaxPreamble bytes. Thunderbird
//     and GnuPG put a one-line notice there, so they cannot be forbidden.
//   - armor headers: at most one, "Version:", with a value of at most
//     MaxArmorHeaderValue bytes, and the policy allows it only incoming
//     (Result.ArmorHeaders; Delta Chat writes none). Comment, Hash and the
//     others are refused: free text nobody needs.
//   - armor lines ending in spaces or tabs are refused (RFC 9580 tells
//     readers to ignore them, so they could only carry a covert channel),
//     and after the END line at most two blank lines may follow (Delta
//     Chat 2.62 writes one before the delimiter, older cores two).
//   - session key packets: each PKESK and SKESK body is read whole (at most
//     MaxESKSize bytes) and every field must have the size its version and
//     algorithm give it, with no byte to spare; at most MaxESKs of them.
//   - part headers: only Content-Type (parameters charset and name, as
//     short tokens), Content-Transfer-Encoding, Content-Description with
//     one of the values clients write, and Content-Disposition inline or
//     attachment with a short token file name; at most MaxPartHeader
//     bytes. Any other field fails the message: a part header cannot be
//     rewritten without rewriting the body.
//   - the protocol parameter was not checked: it is required, as RFC 3156
//     says and every known client writes it.
//   - transfer encodings were decoded: quoted-printable or base64 wrapped
//     armor is refused, no known client writes it and it would be one more
//     decoder in the hot path.
//   - repeated Content-Type fields (top level or in a part) were resolved
//     first-wins: now they make the message not encrypted, since another
//     parser could pick the other one.
//   - delimiters: Delta Chat's parser (mailparse) starts a part at any line
//     that begins with "--" and the boundary, whatever follows. Such a line
//     that is not exactly a delimiter (only spaces and tabs may follow, or
//     "--" and then those for the close delimiter) fails the message,
//     wherever it is; so does the dash-boundary anywhere in the preamble,
//     and a part header field name that starts with '-'.
//   - Content-Type parameters: Go's parser understands quoting and RFC 2231
//     ("boundary*" overrides "boundary"), mailparse does not. A value with
//     an RFC 2231 parameter, a repeated parameter, or a quoted string
//     holding ';', '"' or '\' is refused (mimescan.ParseContentType), top level and
//     in parts, and the boundary must be RFC 2046 bchars, at most 70.
//   - a legacy-format indeterminate length, a marker packet (tag 10) and
//     symmetrically encrypted data without integrity (tag 9) were already
//     refused and still are, as are literal, compressed and signature packets.
//
// The body is expected as Postfix hands it to milters: CRLF line endings,
// no dot-stuffing. A bare LF also ends a line, so LF-only input judges the same.
// Lines longer than MaxLine octets make the message not encrypted (no armor
// or MIME structure needs them) and keep the scanner's memory bounded.
package pgpmime

//go:generate go run ../internal/fixturegen -out ../testdata
