package nodedsn

import (
	"bufio"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
)

// Lookup finds the value of a secret by name.
type Lookup func(name string) (string, bool)

// Env looks secrets up in the process environment.
func Env() Lookup { return os.LookupEnv }

// Chain looks a name up in each Lookup in turn.
func Chain(ls ...Lookup) Lookup {
	return func(name string) (string, bool) {
		for _, l := range ls {
			if l == nil {
				continue
			}
			if v, ok := l(name); ok {
				return v, true
			}
		}
		return "", false
	}
}

// LoadFile reads a secrets file: one NAME=value per line (the value is taken
// verbatim up to the end of the line), blank lines and lines starting with #
// ignored. Like libpq with .pgpass, it refuses a file that group or others may
// read.
func LoadFile(path string) (Lookup, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets file %s is readable by group or others (mode %04o); run chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secrets file: %w", err)
	}
	defer f.Close()
	secrets := map[string]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if t := strings.TrimSpace(line); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		name = strings.TrimSpace(name)
		if !ok || !nameRE.MatchString(name) {
			return nil, fmt.Errorf("secrets file %s line %d: want NAME=value with NAME of letters, digits and '_'", path, n)
		}
		secrets[name] = value
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("secrets file %s: %w", path, err)
	}
	return func(name string) (string, bool) {
		v, ok := secrets[name]
		return v, ok
	}, nil
}

var (
	nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	refRE  = regexp.MustCompile(`^\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})$`)
)

// ErrMissingSecret means a DSN names a secret that is neither in the secrets
// file nor in the environment.
var ErrMissingSecret = errors.New("secret not set")

// IsReference reports whether a value is a secret reference ($NAME or ${NAME}).
func IsReference(v string) bool {
	_, ok := reference(v)
	return ok
}

// reference returns the name a value refers to ("$NAME" or "${NAME}").
func reference(v string) (string, bool) {
	m := refRE.FindStringSubmatch(v)
	if m == nil {
		return "", false
	}
	return m[1] + m[2], true
}

func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Expand replaces every value of dsn that is wholly a reference ($NAME or
// ${NAME}) with the secret of that name: in the key=value form any keyword's
// value (password=$NODE1_PASSWORD); in the URL form the password
// (postgres://app:$NODE1_PASSWORD@db1/app) and query parameter values. A $
// inside a longer value is left alone. A DSN without references is returned
// unchanged. Errors name the secret, never a value.
func Expand(dsn string, lookup Lookup) (string, error) {
	if !strings.Contains(dsn, "$") && !strings.Contains(strings.ToLower(dsn), "%24") {
		return dsn, nil
	}
	if lookup == nil {
		lookup = Env()
	}
	get := func(name string) (string, error) {
		v, ok := lookup(name)
		if !ok {
			return "", fmt.Errorf("the connection string refers to $%s: set it in the environment (or the router's secrets file): %w", name, ErrMissingSecret)
		}
		return v, nil
	}
	if isURL(dsn) {
		return expandURL(dsn, get)
	}
	pairs, err := parseKeywords(dsn)
	if err != nil {
		return "", err
	}
	changed := false
	for i, p := range pairs {
		if name, ok := reference(p.value); ok {
			v, err := get(name)
			if err != nil {
				return "", err
			}
			pairs[i].value, changed = v, true
		}
	}
	if !changed {
		return dsn, nil
	}
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.key + "=" + quote(p.value))
	}
	return b.String(), nil
}

// expandURL expands the password of the userinfo and the query values.
func expandURL(dsn string, get func(string) (string, error)) (string, error) {
	scheme, rest, _ := strings.Cut(dsn, "://")
	authEnd := strings.IndexAny(rest, "/?")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	auth, tail := rest[:authEnd], rest[authEnd:]
	if at := strings.LastIndex(auth, "@"); at >= 0 {
		user, pass, hasPass := strings.Cut(auth[:at], ":")
		if hasPass {
			dec, err := url.PathUnescape(pass)
			if err != nil {
				dec = pass
			}
			if name, ok := reference(dec); ok {
				v, err := get(name)
				if err != nil {
					return "", err
				}
				auth = user + ":" + escape(v) + auth[at:]
			}
		}
	}
	path, query, hasQuery := strings.Cut(tail, "?")
	if hasQuery {
		params := strings.Split(query, "&")
		for i, kv := range params {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			dec, err := url.QueryUnescape(v)
			if err != nil {
				dec = v
			}
			if name, ok := reference(dec); ok {
				s, err := get(name)
				if err != nil {
					return "", err
				}
				params[i] = k + "=" + escape(s)
			}
		}
		path += "?" + strings.Join(params, "&")
	}
	return scheme + "://" + auth + path, nil
}

// escape percent-encodes s for any part of a URL.
func escape(s string) string { return strings.ReplaceAll(url.QueryEscape(s), "+", "%20") }

// quote quotes a keyword value as libpq and pgx read it.
func quote(s string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `\'`) + "'"
}

type pair struct{ key, value string }

// parseKeywords splits a key=value connection string (libpq's rules: values
// may be single-quoted, backslash escapes).
func parseKeywords(s string) ([]pair, error) {
	var out []pair
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			return out, nil
		}
		eq := strings.IndexByte(s[i:], '=')
		if eq < 0 {
			return nil, fmt.Errorf("connection string: missing '=' after %q", strings.TrimSpace(s[i:]))
		}
		key := strings.TrimSpace(s[i : i+eq])
		i += eq + 1
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
				c := s[i]
				if c == '\\' && i+1 < len(s) {
					v.WriteByte(s[i+1])
					i += 2
					continue
				}
				i++
				if c == '\'' {
					closed = true
					break
				}
				v.WriteByte(c)
			}
			if !closed {
				return nil, fmt.Errorf("connection string: unterminated quoted value of %s", key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		out = append(out, pair{key, v.String()})
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// LiteralPassword reports whether dsn carries a password in clear text (not a
// $NAME reference): password=… in the key=value form, user:password@ or
// ?password=… in the URL form.
func LiteralPassword(dsn string) bool {
	if isURL(dsn) {
		_, rest, _ := strings.Cut(dsn, "://")
		authEnd := strings.IndexAny(rest, "/?")
		if authEnd < 0 {
			authEnd = len(rest)
		}
		auth := rest[:authEnd]
		if at := strings.LastIndex(auth, "@"); at >= 0 {
			if _, pass, ok := strings.Cut(auth[:at], ":"); ok && pass != "" {
				dec, err := url.PathUnescape(pass)
				if err != nil {
					dec = pass
				}
				if _, ref := reference(dec); !ref {
					return true
				}
			}
		}
		if _, query, ok := strings.Cut(rest[authEnd:], "?"); ok {
			q, err := url.ParseQuery(query)
			if err == nil {
				for _, v := range q["password"] {
					if _, ref := reference(v); v != "" && !ref {
						return true
					}
				}
			}
		}
		return false
	}
	pairs, err := parseKeywords(dsn)
	if err != nil {
		return false
	}
	for _, p := range pairs {
		if _, ref := reference(p.value); p.key == "password" && p.value != "" && !ref {
			return true
		}
	}
	return false
}

// WithPassword returns dsn with password added, for a server that connects on
// pgtenant's behalf (a move's subscription): a password pgx read from a
// passfile or the environment is not there. dsn must carry no password.
func WithPassword(dsn, password string) string {
	if isURL(dsn) {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "password=" + escape(password)
	}
	return dsn + " password=" + quote(password)
}

// RedactKeywords returns a key=value connection string with every literal
// password value replaced by xxxxx (references are kept), reassembled from
// its parsed pairs so that quoted or escaped passwords cannot leak; ok is
// false when it cannot be parsed.
func RedactKeywords(dsn string) (redacted string, ok bool) {
	pairs, err := parseKeywords(dsn)
	if err != nil {
		return "", false
	}
	var b strings.Builder
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte(' ')
		}
		v := p.value
		if p.key == "password" && !IsReference(v) {
			v = "xxxxx"
		}
		if v == "" || strings.ContainsAny(v, ` '\`) {
			v = quote(v)
		}
		b.WriteString(p.key + "=" + v)
	}
	return b.String(), true
}
