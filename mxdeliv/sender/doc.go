// Package sender delivers outgoing mail to other servers, over HTTPS
// /mxdeliv first and SMTP with STARTTLS as the fallback, as a Postfix
// transport: Postfix stays the only queue, and hands remote mail over LMTP
// to Server, which answers one reply per recipient after DATA, so Postfix
// retries or bounces each recipient by its own result. Nothing is
// acknowledged before a peer acknowledged it: a 2xx reply to Postfix
// follows a 2xx status of the POST or the peer's 2xx to the end of DATA.
//
// # The route of one message
//
// Server groups the recipients by domain and delivers to the domains
// concurrently (MaxParallelDomains). Per domain, Sender.Deliver:
//
//   - waits for one of DestinationConcurrency slots of the domain (else
//     451 4.4.5 after QueueTimeout);
//   - resolves the mail servers: MX records in preference order (at most
//     5), the domain itself when it has no MX but addresses (implicit MX),
//     the address of a domain literal;
//   - per mail server: POST https://<mx>/mxdeliv (X-Mail-From: the bare
//     sender, "" for the null sender; one X-Mail-To per recipient; the body
//     as Postfix sent DATA: CRLF, dot-stuffed, without the end line, which
//     is what the reference relay sends and our receiver takes), unless
//     the host is remembered as SMTP-only; then, if the answer says so,
//     SMTP to port 25 of the same host: EHLO Hostname, STARTTLS required,
//     EHLO, MAIL, one RCPT per recipient, DATA; the peer's replies are
//     passed on per recipient;
//   - a host that took the message over SMTP after its POST failed is sent
//     SMTP only for SMTPOnlyTTL (30 minutes), in memory;
//   - a host that cannot be used (connection, TLS, protocol, a reply we do
//     not understand) leads to the next; when none is left: 451 4.4.1, or
//     451 4.7.5 if a host failed for TLS.
//
// TLS is verified strictly against RootCAs (the system roots) on both
// paths, except for the domains in InsecureTLSDomains (test setups) and
// domain literals, which have no name to verify. Connections are kept
// open between deliveries to busy peers (HTTP/2 where offered, else
// keep-alive); redirects are not followed.
//
// # What the answers mean
//
// The answers of both existing receivers, the reference relay (filtermail)
// and madmail 0.47, and what a recipient gets:
//
//	answer                                        result                      SMTP tried
//	200 "250 OK" (or another SMTP 2xx reply)      250 2.0.0 delivered          no
//	400 "5xx text", message-level                 that reply, permanent        no
//	   (523 Encryption Needed, 554 5.7.1 DKIM, 500 Invalid DATA, 552)
//	400 "5xx text", recipient-level, 1 recipient  that reply, permanent        no
//	400 "5xx/4xx text", recipient-level, several  -                            yes, once
//	   (an x.1.x status, or "(forwarded from": the relay's re-injection,
//	   which rejects for one recipient what SMTP answers per recipient;
//	   the host is not remembered as SMTP-only)
//	400 "4xx text", message-level                 that reply, temporary        no
//	503/429 "4xx text" (a busy receiver)          -                            yes, once
//	   (the host is not remembered as SMTP-only)
//	400 text that is not an SMTP reply            -                            yes
//	413 "552 …" (relay), "message too large"      552 5.3.4 (or its 5xx text)  no
//	   (madmail)
//	403 "Encryption Needed: …" (madmail)          523 5.7.1, permanent         no
//	404 "No valid recipients" (madmail)           550 5.1.1, permanent         no
//	507 "quota" (madmail, all over quota)         452 4.2.2, temporary         no
//	413 other text (a web server's body limit)    -                            yes, once
//	200 with other words (madmail's "OK" or       -                            yes
//	empty body: any web server says as much),
//	other 2xx, 3xx, 403
//	(madmail's "Forbidden" is also any web
//	server's), 404 other text, 405, other 4xx,
//	429, 500, 503, other 5xx, connection or TLS
//	failure, timeout, a dropped connection
//
// A definite policy rejection is final: over SMTP the same receiver would
// reject it the same way, or worse accept it past the policy of its
// /mxdeliv. Everything else means "no /mxdeliv we can use here now", and
// SMTP answers for itself. A POST that fails after the peer read the body
// is not acknowledged either: the SMTP fallback or a later retry may
// deliver a second copy, which Delta Chat drops by Message-ID; losing a
// message is the worse error.
//
// DNS: a null MX (RFC 7505) is 556 5.1.10, a domain that does not exist
// (neither MX nor address records) 550 5.1.2, both permanent; any other
// DNS failure is 451 4.4.3. An internationalized domain is looked up in
// its ASCII form. An address literal of a loopback, private, link-local or
// other special network is refused (550 5.1.2): a local user must not make
// this host POST into its own network, certificates unchecked.
//
// # Bounds
//
// Each step has a timeout (ConnectTimeout, HTTPTimeout, CommandTimeout,
// DataTimeout) and a whole domain's delivery DeliveryTimeout, which must
// stay under Postfix's lmtp_data_done_timeout. A body over MaxMessageSize
// is read to its end and refused with 552 5.3.4. The body is needed more
// than once (the POST, then SMTP, then the next host, and by every domain
// at once), so it is kept: in memory up to SpoolThreshold (1 MiB), above
// that in a temporary file in SpoolDir that is unlinked as soon as it is
// made; each use reads it anew, so memory stays bounded by the threshold
// per message in flight. Peer replies are read in bounded lines, and the
// text passed on to Postfix is cut and made printable ASCII.
//
// # Logs and metrics
//
// Addresses and mail server names are logged only as logging.Addr; errors
// of peers are logged as a kind ("connect", "tls", "timeout", …), never
// their text, which names hosts and IPs. Metrics are
// chatmail_mxdeliv_*, without address, host or domain labels (NewMetrics).
package sender
