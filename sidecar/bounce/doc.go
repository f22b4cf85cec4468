// Package bounce judges, while the body streams past, whether a message has
// the shape of a delivery status notification (a bounce) as mail transfer
// agents write them: RFC 6522 multipart/report carrying an RFC 3464
// delivery-status report. It exists so that the policy's cleartext
// exception for bounces lets through a bounce and nothing else: a message
// with a null sender, From mailer-daemon and Auto-Submitted, whose body was
// never read, could carry a megabyte of text and images (issue 8).
//
// A body passes when all of this holds:
//
//   - the top-level Content-Type appears once and is multipart/report with
//     report-type=delivery-status and a boundary, and no other parameter;
//     the top-level transfer encoding is none, 7bit, 8bit or binary;
//   - there are two or three parts, in this order:
//     1. text/plain (parameters charset, format and delsp only) in 7bit,
//     8bit or quoted-printable, at most MaxText octets as transmitted;
//     2. message/delivery-status, or message/global-delivery-status
//     (RFC 6533, written by Postfix and Exim for SMTPUTF8 mail), without
//     parameters, in 7bit or 8bit, at most MaxStatus octets, whose body
//     parses as delivery-status fields (below);
//     3. optionally the returned message: text/rfc822-headers or
//     message/global-headers whose body is a header section of at most
//     MaxReturnedHeader octets; or message/rfc822 or message/global
//     whose header section (at most MaxReturnedHeader octets) parses and
//     whose body passes pgpmime, judged with the Content-Type and
//     Content-Transfer-Encoding fields of that header section: the
//     returned message is itself an encrypted PGP/MIME message.
//     Parts 3 are in 7bit, 8bit or binary;
//   - each part header holds exactly one Content-Type and at most one each
//     of Content-Transfer-Encoding, Content-Description (Postfix writes
//     it) and Content-Disposition, in at most MaxPartHeader octets; only
//     the text part may have no Content-Type (RFC 2045 5.2 makes it
//     text/plain), because Sendmail writes it with an empty header;
//   - the preamble and the epilogue are at most MaxPreamble octets each;
//   - everything but the body of a returned message/rfc822 part is at most
//     MaxTotal octets, and no line is longer than MaxLine.
//
// The delivery-status body (RFC 3464 2.1) is a per-message block and one or
// more per-recipient blocks, separated by blank lines; blank lines may
// follow the last block but not precede the first. Every line is a field
// "Name: value" or the continuation of one (it starts with a space or tab
// and holds more than white space); each field, unfolded, is at most
// MaxStatusField octets and has a non-empty value; no control characters
// but tab. Field names:
//
//   - per-message: Original-Envelope-Id, Reporting-MTA (required),
//     DSN-Gateway, Received-From-MTA, Arrival-Date;
//   - per-recipient: Original-Recipient, Final-Recipient, Action and
//     Status (these three required), Remote-MTA, Diagnostic-Code,
//     Last-Attempt-Date, Final-Log-ID, Will-Retry-Until;
//   - in either block, extension fields starting with "X-" (RFC 3464 2.4):
//     Postfix writes X-Postfix-Queue-ID and X-Postfix-Sender (with its
//     mail_name in place of "Postfix"), Sendmail X-Actual-Recipient, Exim
//     X-Exim-Diagnostic and X-Remote-MTA-*, Microsoft X-Display-Name,
//     Gmail X-Original-Message-ID. Any other unknown name fails: it is
//     not a DSN field, and the shapes seen in the wild need no more.
//
// A per-recipient field in the per-message block, or the other way round,
// fails. Reporting-MTA, Original-Recipient, Final-Recipient, Action and
// Status must not repeat in a block (parsers would disagree on which one
// counts). Reporting-MTA, DSN-Gateway, Received-From-MTA,
// Original-Recipient, Final-Recipient, Remote-MTA and Diagnostic-Code are
// "type; text" with a type of letters, digits and '-'. Action is failed,
// delayed, delivered, relayed or expanded. Status is an RFC 3463 code:
// class 2, 4 or 5, subject and detail of one to three digits, optionally
// followed by one parenthesised comment.
//
// Loopholes of the exception this replaces, and what is done about them:
//
//   - the body was never read, so any content rode along: the parts, their
//     order and types are fixed and every cleartext part is bounded; at
//     most MaxReadable octets of free text pass, plus what pgpmime allows
//     beside the ciphertext of a returned encrypted message.
//   - HTML, images, alternatives and nested multiparts: refused. Only the
//     returned message may be multipart, and then it must be PGP/MIME.
//     Gmail (multipart/related with HTML and an icon) and Microsoft 365
//     (multipart/alternative with HTML) bounces fail for this reason.
//     Delta Chat trashes unencrypted bounces before reading them
//     (force_encryption, the default), so their users lose nothing.
//   - a returned "original" holding cleartext of any size: refused, it must
//     be encrypted; a message too large for Postfix's bounce_size_limit is
//     returned as headers only, which passes.
//   - a "delivery-status" holding prose: it must parse as DSN fields.
//   - base64: refused everywhere. Only Barracuda was seen writing a base64
//     text part; it would hide the text from anyone reading logs or
//     queues, and the size bound is simplest on undecoded octets.
//   - the parser-differential defences of pgpmime apply here too: a repeated
//     top-level or part Content-Type, RFC 2231 or repeated parameters or
//     quoted ';' (mimescan.ParseContentType), a line starting with the
//     dash-boundary that is not exactly a delimiter (anywhere, the
//     returned message included), the dash-boundary anywhere in the
//     preamble, a delimiter after the close delimiter, a header field name
//     not starting with a letter or digit (so not '-'), overlong lines.
//     In addition a NUL or a CR not directly before the LF fails the
//     message anywhere in the body: parsers disagree on whether a bare CR
//     ends a line.
//
// The body is expected as Postfix hands it to milters: CRLF line endings,
// no dot-stuffing. A bare LF also ends a line, so LF-only input judges the
// same.
package bounce
