// Package config reads the one TOML file that every chatmail daemon shares.
//
// The file has common sections ([mail], [accounts], [postgres], [log]) and one
// section per daemon ([doveauth], [milter], ...). A daemon decodes the common
// sections and its own section strictly: an unknown key is an error that names
// the key, so a typo never silently falls back to a default. Sections of other
// daemons are left to those daemons.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"reflect"
)

// Sections lists every top-level section name a daemon may find in the file.
// A section not in this list is reported as unknown.
var Sections = []string{"mail", "accounts", "postgres", "log", "turn", "admin", "doveauth", "milter", "logd", "metadata-proxy", "turnd", "mxdeliv"}

// Error is a configuration error. Daemons exit with code 2 on it.
type Error struct {
	Key string // dotted key, e.g. "accounts.registration"; empty for file-level errors
	Msg string
}

func (e *Error) Error() string {
	if e.Key == "" {
		return "config: " + e.Msg
	}
	return fmt.Sprintf("config: %s: %s", e.Key, e.Msg)
}

// IsError reports whether err is (or wraps) a configuration error.
func IsError(err error) bool {
	var ce *Error
	return errors.As(err, &ce)
}

// Mail names the chatmail domains this server serves.
type Mail struct {
	// Domains are the chatmail domains. Logins and mail for other domains are
	// left alone, so a server can host chatmail beside ordinary domains.
	Domains []string `toml:"domains"`
}

// Serves reports whether domain (lower case) is one of the chatmail domains.
func (m *Mail) Serves(domain string) bool {
	return slices.Contains(m.Domains, domain)
}

// Accounts holds the rules for just-in-time account creation and for what is
// stored per account.
type Accounts struct {
	Registration       string `toml:"registration"` // "open" or "closed"
	LocalpartMinLength int    `toml:"localpart_min_length"`
	LocalpartMaxLength int    `toml:"localpart_max_length"`
	// LocalpartPunctuation allows '.', '_' and '-' in new local parts,
	// between two letters or digits; off, local parts are [a-z0-9] only.
	LocalpartPunctuation bool `toml:"localpart_punctuation"`
	PasswordMinLength    int  `toml:"password_min_length"`
	// PasswordMaxLength caps every password doveauth looks at, in bytes:
	// longer ones fail before anything is hashed (SHA512-CRYPT's cost grows
	// with the square of the length).
	PasswordMaxLength int    `toml:"password_max_length"`
	PasswordScheme    string `toml:"password_scheme"` // "SHA512-CRYPT" or "ARGON2ID"
	CountMessages     bool   `toml:"count_messages"`
	// CreateBurst and CreatePerMinute limit account creation server-wide
	// (per doveauth process) with a token bucket; CreatePerMinute 0 switches
	// the limit off. Over the limit, a first login fails temporarily.
	CreateBurst     int `toml:"create_burst"`
	CreatePerMinute int `toml:"create_per_minute"`
	// TombstoneKeyFile holds the secret key of the tombstones that deleted
	// accounts leave (a keyed hash of the address, never the address). It
	// is made, with random content and mode 0600, at first use.
	TombstoneKeyFile string `toml:"tombstone_key_file"`
	// TombstoneLifetime is how long a deleted address stays unavailable;
	// 0 is forever.
	TombstoneLifetime Duration `toml:"tombstone_lifetime"`
	// MailboxesDir holds one home directory per account: <mailboxes_dir>/<address>.
	MailboxesDir string `toml:"mailboxes_dir"`
	// MailUser and MailGroup own the mail files; Dovecot gets them as uid/gid.
	MailUser  string `toml:"mail_user"`
	MailGroup string `toml:"mail_group"`
}

// MaxPasswordLength is the highest password_max_length allowed: even that
// costs SHA512-CRYPT a few milliseconds per login.
const MaxPasswordLength = 1024

// Postgres says how to reach the account database.
type Postgres struct {
	DSN string `toml:"dsn"`
	// PasswordFile, if set, holds the database password, so it stays out of
	// the config file and out of the process list.
	PasswordFile string   `toml:"password_file"`
	QueryTimeout Duration `toml:"query_timeout"`
	MaxConns     int      `toml:"max_conns"`
}

// Log configures logging.
type Log struct {
	Level string `toml:"level"` // debug, info, warn, error
	// NoLogFile switches No-Log on while it exists, when [postgres] dsn is
	// not set (with it, the switch is in the database). The admin CLI
	// creates and removes it; daemons notice within a second, without a
	// restart.
	NoLogFile string `toml:"nolog_file"`
}

// Turn is the server's TURN relay as clients learn it from IMAP METADATA:
// metadata-proxy issues credentials for it, turnd checks them.
type Turn struct {
	// SecretFile holds the secret the credentials' passwords are keyed with
	// (HMAC-SHA1); made, random, at first use (keyfile.Load).
	SecretFile string `toml:"secret_file"`
	// Host is what clients connect to: a DNS name or a bare IPv4 address
	// (Delta Chat splits the METADATA value at colons, so no IPv6 literal,
	// and cannot resolve a bracketed [1.2.3.4]). Empty: the first mail
	// domain, without brackets.
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// Lifetime of a credential. Delta Chat asks again when less than 12
	// hours are left, so it must be well beyond that.
	Lifetime Duration `toml:"lifetime"`
	// Realm of the TURN server; empty: the first mail domain.
	Realm string `toml:"realm"`
}

// Credential lifetimes allowed: a client asks for a new credential when
// less than 12 hours are left, at every IDLE cycle (5 minutes) from then
// on, so a lifetime near that makes clients poll; a long one lets a copied
// credential work long after (unless its account is blocked).
const (
	MinTurnLifetime = 48 * time.Hour
	MaxTurnLifetime = 30 * 24 * time.Hour
)

// Common is what every daemon reads.
type Common struct {
	Mail     Mail     `toml:"mail"`
	Accounts Accounts `toml:"accounts"`
	Postgres Postgres `toml:"postgres"`
	Log      Log      `toml:"log"`
	Turn     Turn     `toml:"turn"`
}

// Defaults returns the common settings before the file is applied. They match
// the defaults of existing chatmail relays.
func Defaults() Common {
	return Common{
		Accounts: Accounts{
			Registration:       "open",
			LocalpartMinLength: 9,
			LocalpartMaxLength: 9,
			PasswordMinLength:  9,
			PasswordMaxLength:  128,
			PasswordScheme:     "SHA512-CRYPT",
			CountMessages:      true,
			CreateBurst:        10,
			CreatePerMinute:    60,
			TombstoneKeyFile:   "/var/lib/chatmail/tombstone.key",
			MailboxesDir:       "/home/vmail/mail",
			MailUser:           "vmail",
			MailGroup:          "vmail",
		},
		Postgres: Postgres{QueryTimeout: Duration(2 * time.Second), MaxConns: 16},
		Log:      Log{Level: "info", NoLogFile: "/var/lib/chatmail/nolog"},
		Turn:     Turn{SecretFile: "/var/lib/chatmail-turn/turn.secret", Port: 3478, Lifetime: Duration(120 * time.Hour)},
	}
}

// Validator is implemented by daemon sections that check themselves.
type Validator interface {
	Validate() error
}

// Load reads path, decoding the common sections into the returned Common and
// the [daemon] section into section (a pointer to a struct holding defaults).
// Every error it returns is an *Error.
func Load(path, daemon string, section any) (*Common, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Msg: err.Error()}
	}
	return Parse(string(data), daemon, section)
}

// Parse is Load on the file's text.
func Parse(text, daemon string, section any) (*Common, error) {
	c := Defaults()
	var raw map[string]toml.Primitive
	md, err := toml.Decode(text, &raw)
	if err != nil {
		return nil, &Error{Msg: err.Error()}
	}
	for name := range raw {
		if !slices.Contains(Sections, name) {
			return nil, &Error{Key: name, Msg: "unknown section"}
		}
	}
	decode := func(name string, into any) error {
		p, ok := raw[name]
		if !ok {
			return nil
		}
		if err := md.PrimitiveDecode(p, into); err != nil {
			return &Error{Key: name, Msg: err.Error()}
		}
		return nil
	}
	for _, s := range []struct {
		name string
		into any
	}{{"mail", &c.Mail}, {"accounts", &c.Accounts}, {"postgres", &c.Postgres}, {"log", &c.Log}, {"turn", &c.Turn}, {daemon, section}} {
		if s.into == nil {
			continue
		}
		if err := decode(s.name, s.into); err != nil {
			return nil, err
		}
	}
	// Undecoded reports keys of every section; only ours are errors here.
	for _, k := range md.Undecoded() {
		top := k[0]
		if top == "mail" || top == "accounts" || top == "postgres" || top == "log" || top == "turn" || (top == daemon && section != nil) {
			return nil, &Error{Key: k.String(), Msg: "unknown key"}
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	if v, ok := section.(Validator); ok {
		if err := v.Validate(); err != nil {
			var ce *Error
			if errors.As(err, &ce) && ce.Key != "" {
				ce.Key = daemon + "." + ce.Key
				return nil, ce
			}
			return nil, &Error{Key: daemon, Msg: err.Error()}
		}
	}
	return &c, nil
}

var domainRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]*[a-z0-9])?$|^\[[0-9.]+\]$`)

func (c *Common) validate() error {
	if len(c.Mail.Domains) == 0 {
		return &Error{Key: "mail.domains", Msg: "name at least one chatmail domain"}
	}
	for i, d := range c.Mail.Domains {
		if d != strings.ToLower(d) || !domainRE.MatchString(d) {
			return &Error{Key: "mail.domains", Msg: fmt.Sprintf("%q is not a lower-case domain name", d)}
		}
		if slices.Contains(c.Mail.Domains[:i], d) {
			return &Error{Key: "mail.domains", Msg: fmt.Sprintf("%q is listed twice", d)}
		}
	}
	a := &c.Accounts
	switch a.Registration {
	case "open", "closed":
	default:
		return &Error{Key: "accounts.registration", Msg: fmt.Sprintf("%q: want open or closed", a.Registration)}
	}
	if a.LocalpartMinLength < 1 || a.LocalpartMinLength > 64 {
		return &Error{Key: "accounts.localpart_min_length", Msg: "must be 1 to 64"}
	}
	if a.LocalpartMaxLength < a.LocalpartMinLength || a.LocalpartMaxLength > 64 {
		return &Error{Key: "accounts.localpart_max_length", Msg: "must be at least localpart_min_length and at most 64"}
	}
	if a.PasswordMinLength < 1 {
		return &Error{Key: "accounts.password_min_length", Msg: "must be at least 1"}
	}
	if a.PasswordMaxLength < a.PasswordMinLength || a.PasswordMaxLength > MaxPasswordLength {
		return &Error{Key: "accounts.password_max_length", Msg: fmt.Sprintf("must be at least password_min_length and at most %d", MaxPasswordLength)}
	}
	if a.CreateBurst < 1 {
		return &Error{Key: "accounts.create_burst", Msg: "must be at least 1"}
	}
	if a.CreatePerMinute < 0 {
		return &Error{Key: "accounts.create_per_minute", Msg: "must be 0 (no limit) or more"}
	}
	if !strings.HasPrefix(a.TombstoneKeyFile, "/") {
		return &Error{Key: "accounts.tombstone_key_file", Msg: "must be an absolute path"}
	}
	if a.TombstoneLifetime < 0 {
		return &Error{Key: "accounts.tombstone_lifetime", Msg: "must be 0 (forever) or positive"}
	}
	switch a.PasswordScheme {
	case "SHA512-CRYPT", "ARGON2ID":
	default:
		return &Error{Key: "accounts.password_scheme", Msg: fmt.Sprintf("%q: want SHA512-CRYPT or ARGON2ID", a.PasswordScheme)}
	}
	if !strings.HasPrefix(a.MailboxesDir, "/") {
		return &Error{Key: "accounts.mailboxes_dir", Msg: "must be an absolute path"}
	}
	if a.MailUser == "" || a.MailGroup == "" {
		return &Error{Key: "accounts.mail_user", Msg: "mail_user and mail_group must be set"}
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		return &Error{Key: "log.level", Msg: fmt.Sprintf("%q: want debug, info, warn or error", c.Log.Level)}
	}
	if c.Postgres.QueryTimeout <= 0 {
		return &Error{Key: "postgres.query_timeout", Msg: "must be positive"}
	}
	if c.Postgres.MaxConns < 1 {
		return &Error{Key: "postgres.max_conns", Msg: "must be at least 1"}
	}
	return c.Turn.validate(c.Mail.Domains[0])
}

var ipv4RE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$`)

// validate checks the section and fills the defaults that come from the
// first mail domain.
func (t *Turn) validate(firstDomain string) error {
	bare := strings.TrimSuffix(strings.TrimPrefix(firstDomain, "["), "]")
	if t.Host == "" {
		t.Host = bare
	}
	if t.Realm == "" {
		t.Realm = bare
	}
	if ipv4RE.MatchString(t.Host) {
		if ip := net.ParseIP(t.Host); ip == nil || ip.To4() == nil {
			return &Error{Key: "turn.host", Msg: fmt.Sprintf("%q is not an IPv4 address", t.Host)}
		}
	} else if t.Host != strings.ToLower(t.Host) || !domainRE.MatchString(t.Host) || strings.HasPrefix(t.Host, "[") {
		return &Error{Key: "turn.host", Msg: fmt.Sprintf("%q: want a lower-case DNS name or a bare IPv4 address (clients cannot use IPv6 literals or brackets here)", t.Host)}
	}
	if t.Port < 1 || t.Port > 65535 {
		return &Error{Key: "turn.port", Msg: "must be 1 to 65535"}
	}
	if t.Lifetime.D() < MinTurnLifetime || t.Lifetime.D() > MaxTurnLifetime {
		return &Error{Key: "turn.lifetime", Msg: fmt.Sprintf("must be %v to %v", MinTurnLifetime, MaxTurnLifetime)}
	}
	if !strings.HasPrefix(t.SecretFile, "/") {
		return &Error{Key: "turn.secret_file", Msg: "must be an absolute path"}
	}
	if t.Realm == "" || strings.ContainsAny(t.Realm, "\"\\\x00\r\n") {
		return &Error{Key: "turn.realm", Msg: "must be a non-empty string without quotes, backslashes or line breaks"}
	}
	return nil
}

// RequirePostgres checks that the daemon has what it needs to reach the
// database; only daemons that use it call this.
func (c *Common) RequirePostgres() error {
	if c.Postgres.DSN == "" {
		return &Error{Key: "postgres.dsn", Msg: "must be set"}
	}
	return nil
}

// PostgresDSN returns the DSN with the password from password_file, if any.
func (c *Common) PostgresDSN() (string, error) {
	dsn := c.Postgres.DSN
	if c.Postgres.PasswordFile == "" {
		return dsn, nil
	}
	pw, err := os.ReadFile(c.Postgres.PasswordFile)
	if err != nil {
		return "", &Error{Key: "postgres.password_file", Msg: err.Error()}
	}
	p := strings.TrimRight(string(pw), "\r\n")
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		return "", &Error{Key: "postgres.password_file", Msg: "use a key=value DSN with password_file"}
	}
	return dsn + " password='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(p) + "'", nil
}

// Duration is a time.Duration written as "2s", "150ms" in the file.
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// FileMode is a permission mode written as an octal string, "0660".
type FileMode os.FileMode

// UnmarshalText implements encoding.TextUnmarshaler.
func (m *FileMode) UnmarshalText(b []byte) error {
	v, err := strconv.ParseUint(string(b), 8, 32)
	if err != nil || v > 0o777 {
		return fmt.Errorf("%q is not an octal permission mode like \"0660\"", b)
	}
	*m = FileMode(v)
	return nil
}

// CheckLoopback checks that addr is host:port on a loopback address, as metrics
// listeners must be: they are for a local scraper, never for the network.
func CheckLoopback(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &Error{Key: key, Msg: err.Error()}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return &Error{Key: key, Msg: fmt.Sprintf("bad port %q", port)}
	}
	ip := net.ParseIP(host)
	if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return &Error{Key: key, Msg: fmt.Sprintf("%q is not a loopback address", host)}
	}
	return nil
}

// CheckExample reports, as an error, where the example file at path (the
// repository's chatmail.toml.example) differs, in daemon's section, from the
// compiled defaults that fresh returns: the file an admin starts from must
// say what the daemon does without it. For each daemon's tests.
func CheckExample[S any](path, daemon string, fresh func() S) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	got := fresh()
	if _, err := Parse(string(b), daemon, &got); err != nil {
		return err
	}
	if want := fresh(); !reflect.DeepEqual(got, want) {
		return fmt.Errorf("the example's [%s] differs from the defaults:\nexample  %+v\ndefaults %+v", daemon, got, want)
	}
	return nil
}
