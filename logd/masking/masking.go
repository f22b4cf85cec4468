// Package masking holds the No-Log rules for the log lines of Postfix
// (3.7, 3.10) and Dovecot (2.3, 2.4) that chatmail-logd receives.
//
// With No-Log off a line passes unchanged. With No-Log on:
//
//   - a line is kept only if it is a warning or worse, or the start, reload
//     or stop of the service itself (Postfix master and postfix-script,
//     Dovecot master's "starting up"); every other line (connect, login,
//     delivery, reject, ...) says what a user did and is dropped;
//   - in a kept line every address, user name, IP (v4, v6, bracketed),
//     client or relay host name, message id, Postfix queue id, Dovecot
//     session id and Dovecot dict key is replaced by "-".
//
// Severity comes from the syslog priority when the datagram has one
// (Dovecot through syslog(3)), never from the text, which a user name can
// forge; Postfix's postlog datagrams have no priority, and Postfix puts
// "warning: ", "error: ", "fatal: " or "panic: " right after the tag, before
// anything a user controls.
//
// The masks are shapes, not a parser of every message: a kept line is
// masked as a whole, so that an identity in an unforeseen place is still
// caught when it looks like one. A replacement is never longer than what it
// replaces, so a masked line is never longer than the line.
package masking

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// Source is the program a line comes from.
type Source uint8

const (
	Postfix Source = iota
	Dovecot
)

func (s Source) String() string {
	if s == Dovecot {
		return "dovecot"
	}
	return "postfix"
}

// Syslog severities (RFC 5424 §6.2.1).
const (
	SevEmerg   = 0
	SevWarning = 4
	SevInfo    = 6
	SevNone    = -1 // the datagram had no <PRI>
)

// MaxLine is the longest line kept; the rest is cut. Postfix cuts at about
// 2000 characters, glibc's syslog does not cut.
const MaxLine = 8192

// Line is one log line split where the rules need it.
type Line struct {
	Source Source
	// Severity is the syslog severity from <PRI>, or SevNone.
	Severity int
	// Text is the line without <PRI> and without a trailing newline; line
	// breaks inside are replaced by spaces so that no datagram can forge a
	// line of the output.
	Text string
	// Tag is the program field before the first ": ", e.g.
	// "postfix/smtpd[123]" or "dovecot"; empty when there is none.
	Tag string
	// Msg is what follows the tag's ": " (the whole text without a tag).
	Msg string
}

// Parse splits a datagram: Postfix's "Mmm dd HH:MM:SS host prog[pid]: text"
// or syslog(3)'s "<PRI>Mmm dd HH:MM:SS ident[pid]: text". It accepts any
// timestamp without ": " in it (RFC 3164 or RFC 3339).
func Parse(src Source, b []byte) Line { return ParseString(src, string(b)) }

// ParseString is Parse of a datagram held in a string; the Line's strings
// share its memory unless a line break had to be replaced.
func ParseString(src Source, b string) Line {
	l := Line{Source: src, Severity: SevNone}
	if len(b) > 2 && b[0] == '<' {
		if end := strings.IndexByte(b[:min(len(b), 5)], '>'); end > 1 {
			pri, ok := 0, true
			for _, c := range []byte(b[1:end]) {
				if c < '0' || c > '9' {
					ok = false
					break
				}
				pri = pri*10 + int(c-'0')
			}
			if ok && pri <= 191 {
				l.Severity = pri & 7
				b = b[end+1:]
			}
		}
	}
	b = strings.TrimRight(b, "\r\n\x00")
	if len(b) > MaxLine {
		b = b[:MaxLine]
	}
	if strings.ContainsAny(b, "\r\n") {
		c := []byte(b)
		for i, x := range c {
			if x == '\n' || x == '\r' {
				c[i] = ' '
			}
		}
		b = string(c)
	}
	l.Text = b
	if head, msg, ok := strings.Cut(l.Text, ": "); ok {
		l.Tag = head[strings.LastIndexByte(head, ' ')+1:]
		l.Msg = msg
	} else {
		l.Msg = l.Text
	}
	return l
}

// program is the tag without "[pid]".
func (l Line) program() string {
	p, _, _ := strings.Cut(l.Tag, "[")
	return p
}

// Serious reports whether the line is a warning or worse.
func (l Line) Serious() bool {
	if l.Severity != SevNone {
		return l.Severity <= SevWarning
	}
	if l.Source != Postfix || l.Tag == "" {
		return false
	}
	for _, p := range []string{"warning: ", "error: ", "fatal: ", "panic: "} {
		if strings.HasPrefix(l.Msg, p) {
			return true
		}
	}
	return false
}

// Lifecycle reports whether the line is the start, reload or stop of the
// service itself.
func (l Line) Lifecycle() bool {
	switch l.Source {
	case Postfix:
		prog := l.program()
		switch {
		case strings.HasSuffix(prog, "/master"):
			for _, p := range []string{"daemon started -- ", "reload -- ", "terminating on signal "} {
				if strings.HasPrefix(l.Msg, p) {
					return true
				}
			}
		case strings.HasSuffix(prog, "/postfix-script"):
			for _, p := range []string{"starting the Postfix mail system", "stopping the Postfix mail system", "refreshing the Postfix mail system"} {
				if l.Msg == p {
					return true
				}
			}
		}
	case Dovecot:
		// "master: Dovecot v2.3.19.1 (9b53102964) starting up for imap, lmtp (core dumps disabled)"
		if rest, ok := strings.CutPrefix(l.Msg, "master: Dovecot v"); ok && strings.Contains(rest, " starting up") {
			return true
		}
	}
	return false
}

// Keep reports whether the line survives No-Log.
func (l Line) Keep() bool { return l.Serious() || l.Lifecycle() }

// Apply is the No-Log rule on one line: what to write (without newline),
// whether to write it, and whether masking changed it.
func Apply(l Line, nolog bool) (out string, keep, masked bool) {
	if !nolog {
		// Unchanged, but for a password: never on disk, whatever the mode.
		out = Secrets(l.Source, l.Text)
		return out, true, out != l.Text
	}
	if !l.Keep() {
		return "", false, false
	}
	text, cut := Cut(l.Text)
	out = Mask(l.Source, text)
	if cut {
		out += CutMark
	}
	return out, true, out != l.Text
}

// MaxKept is the longest kept line under No-Log; the rest is cut before
// masking (which costs in proportion to the length) and CutMark put at the
// end. A warning worth reading says what it has to say in its first
// kilobyte; what follows in a long line is mostly a client's input.
const MaxKept = 1024

// CutMark ends a line that Cut shortened.
const CutMark = " [cut]"

// Cut shortens text to at most MaxKept bytes, at a space if there is one in
// the last quarter, so that no address, IP or name is cut into a fragment
// that no longer has its shape; else at a UTF-8 boundary.
func Cut(text string) (string, bool) {
	if len(text) <= MaxKept {
		return text, false
	}
	i := MaxKept
	if sp := strings.LastIndexByte(text[MaxKept*3/4:MaxKept], ' '); sp >= 0 {
		i = MaxKept*3/4 + sp
	} else {
		for i > 0 && !utf8.RuneStart(text[i]) {
			i--
		}
	}
	return text[:i], true
}

var (
	// A Dovecot dict key names the user and, for passdb lookups, carries
	// the password: `Failed to lookup key shared/passdb/<password>"<user>:
	// dict-server returned failure`. Everything from the key to the last
	// ": dict-server" goes, or to the end of the line without one.
	dictKeyServer = regexp.MustCompile(`\b(?:shared|priv)/.*: dict-server`)
	dictKey       = regexp.MustCompile(`\b(?:shared|priv)/.*$`)
	// An address with a quoted local part, `"bob smith"@chat.test` or
	// `"x>carol"@other.test`: before the angle brackets, whose rule a ">"
	// inside the quotes would mislead.
	quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"@[^\s<>()\[\],;:"'=]*`)
	// Anything in angle brackets: addresses, message ids, HELO names,
	// Dovecot session ids and pids. "<>" (the null sender) stays.
	angle = regexp.MustCompile(`<[^<>]+>`)
	// Dovecot's "service(user)" and "dict(user,ip,<session>)" prefixes; a
	// pid in parentheses, "auth-worker(123)", stays.
	paren = regexp.MustCompile(`\b([A-Za-z][A-Za-z0-9_-]*)\(([^()]*)\)`)
	// Absolute paths in Dovecot lines: a mail home names its user
	// (".../chat.test/bob/dovecot.index.log"). Paths of the system stay.
	path = regexp.MustCompile(`(^|[\s='"(])/[^\s,;'"()<>]*`)
	// key=value pairs that name a person, a peer or a message.
	kv = regexp.MustCompile(`\b(user|sasl_username|sasl_sender|from|to|orig_to|helo|rip|lip|client|relay|session|sender|recipient|orig_client|reverse_client|msgid|message-id|login_user|original_user|remote|local)=([^\s,;]+)`)
	// host[ip] as Postfix writes peers, and a bare bracketed address.
	hostIP = regexp.MustCompile(`(?:[A-Za-z0-9._-]+)?\[(?:IPv6:)?[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*(?:%[A-Za-z0-9]+)?\]`)
	// What is left of one without its "]": a line cut in the middle,
	// "unknown[2001:db8:85a3:1:2:3". unclosed keeps it when a "]" follows.
	openIP = regexp.MustCompile(`\[(?:IPv6:)?[0-9A-Fa-f]*[.:][0-9A-Fa-f.:]*`)
	// "hostname foo.example does not resolve to address ...".
	hostname = regexp.MustCompile(`\b(hostname|host|address) ([A-Za-z0-9._:-]*[.:][A-Za-z0-9._:-]*)`)
	ipv4     = regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}\b`)
	// Addresses outside brackets, "User doesn't exist: bob@example.org".
	email = regexp.MustCompile(`[^\s<>()\[\],;:"'=]*@[^\s<>()\[\],;:"'=]+`)
	// Postfix queue ids: short (hex, 6 or more) and long (enable_long_queue_ids).
	queueID = regexp.MustCompile(`\b(?:[0-9A-F]{6,}|[0-9BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxy]{10,}z[0-9BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxy]+)\b`)
)

// Secrets removes what must reach no log in any mode: Dovecot's passdb
// dict keys, which carry the password of a login whose lookup failed
// (doveauth's key is passdb/<password>"<user>, and Dovecot logs the key of
// a failed lookup at error level).
func Secrets(src Source, text string) string {
	if src != Dovecot || !strings.Contains(text, "passdb/") {
		return text
	}
	if s := passdbKeyServer.ReplaceAllString(text, "-: dict-server"); s != text {
		return s
	}
	return passdbKey.ReplaceAllString(text, "-")
}

var (
	passdbKeyServer = regexp.MustCompile(`\b(?:shared|priv)/passdb/.*: dict-server`)
	passdbKey       = regexp.MustCompile(`\b(?:shared|priv)/passdb/.*$`)
)

// Mask replaces every identity in text by "-". It is idempotent and never
// makes the text longer: one pass can uncover a shape for another (a mask
// joining two fragments), so it repeats until nothing changes. Every pass
// either shortens the text or leaves it in its final form, so this ends;
// the bound is a guard.
func Mask(src Source, text string) string {
	for range 16 {
		m := maskOnce(src, text)
		if m == text {
			break
		}
		text = m
	}
	return text
}

func maskOnce(src Source, text string) string {
	s := text
	// Each rule runs only when the text has the character its shape needs:
	// most kept lines are short and plain, and a regexp costs per byte.
	if strings.Contains(s, "shared/") || strings.Contains(s, "priv/") {
		s = dictKeyServer.ReplaceAllString(s, "-: dict-server")
		s = dictKey.ReplaceAllString(s, "-")
	}
	if strings.Contains(s, `"@`) {
		s = quoted.ReplaceAllString(s, "-")
	}
	if strings.IndexByte(s, '<') >= 0 {
		s = angle.ReplaceAllString(s, "<->")
	}
	if src == Dovecot && strings.IndexByte(s, '(') >= 0 {
		s = paren.ReplaceAllStringFunc(s, func(m string) string {
			i := strings.IndexByte(m, '(')
			inner := m[i+1 : len(m)-1]
			if inner == "" || inner == "-" || allDigits(inner) {
				return m
			}
			return m[:i] + "(-)"
		})
	}
	if src == Dovecot && strings.IndexByte(s, '/') >= 0 {
		s = path.ReplaceAllStringFunc(s, func(m string) string {
			i := strings.IndexByte(m, '/')
			for _, p := range systemDirs {
				if strings.HasPrefix(m[i:], p) {
					return m
				}
			}
			return m[:i] + "-"
		})
	}
	if strings.IndexByte(s, '=') >= 0 {
		s = kv.ReplaceAllStringFunc(s, func(m string) string {
			k, v, _ := strings.Cut(m, "=")
			if v == "<>" || v == "<->" || v == "-" {
				return m
			}
			if strings.HasPrefix(v, "<") && strings.HasSuffix(v, ">") {
				return k + "=<->"
			}
			return k + "=-"
		})
	}
	if strings.IndexByte(s, '[') >= 0 {
		s = hostIP.ReplaceAllString(s, "-[-]")
		s = replaceMatches(s, openIP.FindAllStringIndex(s, -1), func(i, j int) bool {
			return j == len(s) || s[j] != ']'
		}, "[-")
	}
	if strings.Contains(s, "host") || strings.Contains(s, "address") {
		s = hostname.ReplaceAllString(s, "$1 -")
	}
	if strings.Count(s, ":") >= 2 {
		s = maskIPv6(s) // before IPv4: "::ffff:192.0.2.1" ends in one
	}
	if strings.IndexByte(s, '.') >= 0 {
		s = ipv4.ReplaceAllString(s, "-")
	}
	if strings.IndexByte(s, '@') >= 0 {
		s = email.ReplaceAllString(s, "-")
	}
	s = queueID.ReplaceAllString(s, "-")
	// Domain names after the tag: the syslog header (time, our host name,
	// program) is not a correspondent's.
	if h := strings.Index(s, ": "); h >= 0 {
		s = s[:h+2] + maskDomains(s[h+2:])
	} else {
		s = maskDomains(s)
	}
	return s
}

// replaceMatches replaces the spans [i, j) of s for which ok says so by
// with.
func replaceMatches(s string, spans [][]int, ok func(i, j int) bool, with string) string {
	var b strings.Builder
	last := 0
	for _, m := range spans {
		if !ok(m[0], m[1]) {
			continue
		}
		if b.Len() == 0 {
			b.Grow(len(s))
		}
		b.WriteString(s[last:m[0]])
		b.WriteString(with)
		last = m[1]
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

// maskIPv6 replaces IPv6 addresses: runs of hex digits, colons and dots
// that start a word (or follow "IPv6:") and that isIPv6 accepts. By hand,
// not by a regexp: no \b after a form ending in "::", and a regexp of
// counted groups costs a lot per byte on every line with a time in it.
func maskIPv6(s string) string {
	var b strings.Builder
	last := 0
	for i := 0; i < len(s); {
		c := s[i]
		if !(hexDigit(c) || c == ':') || (i > 0 && !ipv6Start(s, i)) {
			i++
			continue
		}
		j := i
		for j < len(s) && (hexDigit(s[j]) || s[j] == ':' || s[j] == '.') {
			j++
		}
		z := j
		for z > i && s[z-1] == '.' {
			z--
		}
		if isIPv6(s[i:z]) {
			b.WriteString(s[last:i])
			b.WriteByte('-')
			last = z
		}
		i = j
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func hexDigit(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// ipv6Start: s[i] does not continue a word, a number or an address, or
// follows "IPv6:".
func ipv6Start(s string, i int) bool {
	p := s[i-1]
	if !(p >= '0' && p <= '9' || p >= 'a' && p <= 'z' || p >= 'A' && p <= 'Z' || p == '_' || p == ':' || p == '.') {
		return true
	}
	return i >= 5 && strings.EqualFold(s[i-5:i], "ipv6:")
}

// isIPv6 decides for a run of hex digits, colons and dots: groups of at
// most four hex digits, the last one may be an IPv4; a "::" form with a
// digit in it, or three or more groups, but for a time of day ("14:10:12").
func isIPv6(m string) bool {
	if strings.Count(m, ":") < 2 {
		return false
	}
	groups := strings.Split(m, ":")
	n := 0
	for k, g := range groups {
		if strings.IndexByte(g, '.') >= 0 {
			if k != len(groups)-1 || !ipv4.MatchString(g) {
				return false
			}
		} else if len(g) > 4 {
			return false
		}
		if g != "" {
			n++
		}
	}
	if strings.Contains(m, "::") {
		return n > 0
	}
	if n < 3 {
		return false
	}
	if len(groups) == 3 {
		clock := true
		for _, g := range groups {
			if len(g) != 2 || !allDigits(g) {
				clock = false
			}
		}
		return !clock
	}
	return true
}

// maskDomains replaces every domain-shaped token, labels joined by dots
// and ending in a label that can be a top-level domain (two or more
// letters, or an IDN's "xn--"), by "-": a correspondent's domain beside a
// time says who mails whom ("no MX host for carol-home.example", "TLS
// policy lookup for example.org/mx.example.org", "name=_25._tcp.mx.example").
// What keeps a line readable stays: program names and setting names have
// no dot, versions and source files ("3.10.1", "mail-index.c") end in no
// such label, and absolute or relative paths ("/etc/postfix/main.cf",
// "../ssl/statem/statem_clnt.c") are not names. A few file names whose
// suffix is no top-level domain stay too.
func maskDomains(s string) string {
	var b strings.Builder
	last := 0
	for i := 0; i < len(s); {
		if !domainChar(s[i]) {
			i++
			continue
		}
		j := i
		for j < len(s) && domainChar(s[j]) {
			j++
		}
		// Trim what ends a sentence or starts an ellipsis.
		a, z := i, j
		for a < z && (s[a] == '.' || s[a] == '-') {
			a++
		}
		for z > a && (s[z-1] == '.' || s[z-1] == '-') {
			z--
		}
		if isDomain(s[a:z]) && !inPath(s, i) {
			b.WriteString(s[last:a])
			b.WriteByte('-')
			last = z
		}
		i = j
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func domainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

// fileSuffixes are name endings of files that no top-level domain has.
var fileSuffixes = map[string]bool{"conf": true, "log": true, "db": true, "lmdb": true, "cdb": true, "pem": true, "crt": true, "lock": true, "pid": true, "sock": true, "index": true, "cache": true, "lua": true, "sieve": true}

func isDomain(t string) bool {
	dot := strings.LastIndexByte(t, '.')
	if dot <= 0 || strings.Contains(t, "..") {
		return false
	}
	tld := strings.ToLower(t[dot+1:])
	if strings.HasPrefix(tld, "xn--") && len(tld) > 4 {
		return true
	}
	if len(tld) < 2 || fileSuffixes[tld] || t == "main.cf" || t == "master.cf" {
		return false
	}
	for k := 0; k < len(tld); k++ {
		if tld[k] < 'a' || tld[k] > 'z' {
			return false
		}
	}
	return true
}

// inPath reports whether the token at s[i] is part of a path that starts
// with "/", "./", "../" or "~/".
func inPath(s string, i int) bool {
	k := i
	for k > 0 && (domainChar(s[k-1]) || s[k-1] == '/') {
		k--
	}
	if k == i && (k == 0 || s[k-1] != '/') {
		return false
	}
	p := s[k:]
	return strings.HasPrefix(p, "/") || strings.HasPrefix(p, "./") || strings.HasPrefix(p, "../") || strings.HasPrefix(p, "~/")
}

// systemDirs are where Dovecot's own files live; a path elsewhere may be a
// mail home.
var systemDirs = []string{"/etc/", "/usr/", "/run/", "/var/run/", "/var/lib/dovecot/", "/proc/", "/dev/"}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
