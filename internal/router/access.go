package router

import (
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// UserAccess is how the router runs one user's transactions (see
// Config.Access).
type UserAccess struct {
	// Role is the Postgres role the user's backend connections run as:
	// sent as the startup parameter role, so that RESET ROLE, RESET ALL
	// and DISCARD ALL come back to it. Each node gets one pool per role.
	// Empty means the node DSN's own user.
	Role string
	// Tenant, when set, restricts the user to that tenant: every statement
	// runs for it, naming another tenant is refused, and so are the
	// statements that could leave it (see checkAccess). Role is then the
	// tenant's shard's restricted role.
	Tenant string
}

// startAccess applies the user's access after authentication: a
// restricted user's tenant becomes the session's, whatever the startup
// options said.
func (ss *session) startAccess() *wire.Error {
	if ss.srv.cfg.Access == nil {
		return nil
	}
	ss.access = ss.srv.cfg.Access(ss.user)
	if t := ss.access.Tenant; t != "" {
		if ss.access.Role == "" {
			return &wire.Error{Code: "28000", Message: fmt.Sprintf("user %q is restricted to tenant %q, which is not registered", ss.user, t)}
		}
		if ss.tenant != "" && ss.tenant != t {
			return &wire.Error{Code: "42501", Message: fmt.Sprintf("user %q is restricted to tenant %q", ss.user, t)}
		}
		ss.startTenant, ss.tenant = t, t
	}
	return nil
}

// restrictTenant keeps a restricted user on its tenant: statements that
// need no shard run on the tenant's shard too (its backend role may use no
// other), and another tenant is refused.
func (ss *session) restrictTenant(tenant *string) *wire.Error {
	t := ss.access.Tenant
	if t == "" || *tenant == t {
		return nil
	}
	if *tenant == anyTenant || *tenant == descTenant {
		*tenant = t
		return nil
	}
	return &wire.Error{Code: "42501", Message: fmt.Sprintf("user %q is restricted to tenant %q and cannot run statements for tenant %q", ss.user, t, *tenant),
		Hint: "Log in as another user to work on other tenants."}
}

// checkAccess refuses, for users that run as a role, the statements that
// could leave that role (the backend's session user is the node DSN's
// user, so SET ROLE to it would succeed), and, for restricted users, any
// statement outside a short list of kinds known to stay inside the role's
// privileges and the tenant's rows. Postgres enforces the privileges
// themselves: this only keeps the role in place.
func (ss *session) checkAccess(sql string) *wire.Error {
	if ss.access.Role == "" && ss.access.Tenant == "" {
		return nil
	}
	restricted := ss.access.Tenant != ""
	if !restricted && !mayEscape(sql) {
		return nil
	}
	e := accessCheck(sql, restricted)
	if e != nil && classify(sql).ddl {
		e.Hint = ddlHint // schema changes are not the router's to run
	}
	return e
}

// mayEscape is a quick, allocation-free look for the words one of which
// every statement accessCheck refuses for an unrestricted user contains, in
// any case: set (also in RESET and set_config), do, create, alter, load,
// query_to_xml, and "u&" (a Unicode identifier). Ordinary statements are
// then not tokenized.
func mayEscape(sql string) bool {
	for i := 0; i < len(sql); i++ {
		var w string
		switch sql[i] | 0x20 { // ASCII lower case; other bytes never match
		case 's':
			w = "set"
		case 'd':
			w = "do"
		case 'c':
			w = "create"
		case 'a':
			w = "alter"
		case 'l':
			w = "load"
		case 'q':
			w = "query_to_xml"
		case 'u':
			w = "u&"
		default:
			continue
		}
		if len(sql)-i >= len(w) && hasFoldPrefix(sql[i:], w) {
			return true
		}
	}
	return false
}

// hasFoldPrefix reports whether s starts with lower-case ASCII w in any case.
func hasFoldPrefix(s, w string) bool {
	for k := 1; k < len(w); k++ {
		c := s[k]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[k] {
			return false
		}
	}
	return true
}

func refused(what string) *wire.Error {
	return &wire.Error{Code: "42501", Message: "permission denied: " + what + " is not allowed for this router user",
		Hint: "The router runs this user's transactions under a fixed role; connect as another user for this."}
}

// restrictedStarts are the statement kinds a restricted user may run.
var restrictedStarts = map[string]bool{
	"select": true, "with": true, "values": true, "table": true, "insert": true, "update": true, "delete": true,
	"merge": true, "begin": true, "start": true, "commit": true, "end": true, "rollback": true, "abort": true,
	"savepoint": true, "release": true, "show": true, "explain": true, "prepare": true, "execute": true,
	"deallocate": true, "declare": true, "fetch": true, "move": true, "close": true, "set": true, "reset": true,
	"copy": true, "discard": true,
}

// roleFuncs are functions refused to every user that runs as a role: they
// run SQL given as text (which could hold SET ROLE).
var roleFuncs = map[string]bool{
	"query_to_xml": true, "query_to_xmlschema": true, "query_to_xml_and_xmlschema": true,
}

// restrictedFuncs are functions refused to restricted users: channels to
// other tenants of the node (notifications, large objects, dblink).
func restrictedFunc(name string) bool {
	switch {
	case name == "pg_notify", name == "loread", name == "lowrite", strings.HasPrefix(name, "lo_"),
		strings.HasPrefix(name, "dblink"), strings.HasPrefix(name, "pg_read_"), strings.HasPrefix(name, "pg_ls_"):
		return true
	}
	return false
}

// accessCheck scans sql (every statement in it) as checkAccess describes.
func accessCheck(sql string, restricted bool) *wire.Error {
	toks := sqlTokens(sql)
	start := true
	var first string // first word of the current statement
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.kind == tkSemi {
			start = true
			continue
		}
		word := ""
		if t.kind == tkWord {
			word = t.text
		}
		if start {
			start = false
			first = word
			if t.kind == tkUnicodeIdent {
				return refused("a U& identifier")
			}
			if restricted && !restrictedStarts[first] {
				return refused(strings.ToUpper(first) + " (a restricted user runs only queries, DML, COPY to or from the client, and transaction control)")
			}
			switch first {
			case "do":
				return refused("DO")
			case "set", "reset":
				j := i + 1
				if j < len(toks) && (toks[j].text == "local" || toks[j].text == "session") && toks[j].kind == tkWord {
					j++
				}
				if j < len(toks) {
					name := toks[j].text
					if name == "authorization" || (name == "session" && j+1 < len(toks) && toks[j+1].text == "authorization") {
						return refused("SET SESSION AUTHORIZATION")
					}
					if name == "role" || name == "session_authorization" || name == "is_superuser" {
						return refused(strings.ToUpper(first) + " ROLE")
					}
					if name == "all" && first == "reset" && restricted {
						break
					}
					if restricted && (name == "search_path" || (strings.HasPrefix(name, "pgtenant") && !(j+2 < len(toks) && toks[j+1].text == "." && toks[j+2].text == "tenant"))) {
						return refused(strings.ToUpper(first) + " " + name)
					}
				}
			case "create":
				for j := i + 1; j < len(toks) && j < i+4; j++ {
					if w := toks[j].text; toks[j].kind == tkWord && (w == "function" || w == "procedure") {
						return refused("CREATE " + strings.ToUpper(w))
					}
				}
			case "alter":
				if i+1 < len(toks) && (toks[i+1].text == "role" || toks[i+1].text == "user" || toks[i+1].text == "system") {
					return refused("ALTER " + strings.ToUpper(toks[i+1].text))
				}
			case "load":
				return refused("LOAD")
			case "copy":
				if restricted {
					io := false
					for j := i + 1; j < len(toks) && toks[j].kind != tkSemi; j++ {
						if toks[j].kind == tkWord && (toks[j].text == "program" || toks[j].text == "stdin" || toks[j].text == "stdout") {
							io = io || toks[j].text != "program"
							if toks[j].text == "program" {
								return refused("COPY ... PROGRAM")
							}
						}
					}
					if !io {
						return refused("COPY to or from a file (use STDIN or STDOUT)")
					}
				}
			}
		}
		if t.kind == tkUnicodeIdent {
			return refused("a U& identifier")
		}
		if t.kind != tkWord && t.kind != tkQuotedIdent {
			continue
		}
		name := t.text
		if roleFuncs[name] {
			return refused(name)
		}
		if restricted && restrictedFunc(name) {
			return refused(name)
		}
		if restricted && (name == "notify" || name == "listen") && first == name {
			return refused(strings.ToUpper(name))
		}
		if name == "set_config" {
			// Only with a literal setting name: set_config('role', ...) or
			// a name computed at run time would change the role.
			if i+3 >= len(toks) || toks[i+1].text != "(" || toks[i+2].kind != tkString || toks[i+3].text != "," {
				return refused("set_config with a setting name that is not a string literal")
			}
			setting := strings.ToLower(strings.TrimSpace(toks[i+2].text))
			switch {
			case setting == "role" || setting == "session_authorization" || setting == "is_superuser" || setting == "pgtenant.tenant_id":
				// pgtenant.tenant_id is what row-level security compares with.
				return refused("set_config of " + setting)
			case restricted && (setting == "search_path" || strings.HasPrefix(setting, "pgtenant.")):
				return refused("set_config of " + setting)
			}
		}
	}
	return nil
}

// Token kinds of sqlTokens.
const (
	tkWord          = iota + 1 // keyword or unquoted identifier, lower-cased
	tkQuotedIdent              // "identifier", unquoted
	tkUnicodeIdent             // U&"..." (its escapes are not decoded)
	tkString                   // '...', E'...' without backslashes, $tag$...$tag$: the value
	tkEscapedString            // E'...' with backslash escapes, U&'...': not decoded
	tkSemi                     // ;
	tkOther                    // punctuation, numbers, parameters
)

type sqlToken struct {
	kind int
	text string
}

// sqlTokens splits sql into tokens, skipping comments and whitespace.
func sqlTokens(s string) []sqlToken {
	var out []sqlToken
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' && s[i] != '\r' { // a -- comment ends at either, as in PostgreSQL
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 0
			for i < len(s) {
				if s[i] == '/' && i+1 < len(s) && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && i+1 < len(s) && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
		case c == ';':
			out = append(out, sqlToken{tkSemi, ";"})
			i++
		case c == '\'':
			v, n := quoted(s[i:], '\'', false)
			out = append(out, sqlToken{tkString, v})
			i += n
		case (c == 'e' || c == 'E') && i+1 < len(s) && s[i+1] == '\'':
			v, n := quoted(s[i+1:], '\'', true)
			k := tkString
			if strings.IndexByte(s[i+1:i+1+n], '\\') >= 0 {
				k = tkEscapedString
			}
			out = append(out, sqlToken{k, v})
			i += 1 + n
		case (c == 'u' || c == 'U') && i+2 < len(s) && s[i+1] == '&' && (s[i+2] == '"' || s[i+2] == '\''):
			v, n := quoted(s[i+2:], s[i+2], false)
			k := tkUnicodeIdent
			if s[i+2] == '\'' {
				k = tkEscapedString
			}
			out = append(out, sqlToken{k, v})
			i += 2 + n
		case c == '"':
			v, n := quoted(s[i:], '"', false)
			out = append(out, sqlToken{tkQuotedIdent, v})
			i += n
		case c == '$' && i+1 < len(s) && !(s[i+1] >= '0' && s[i+1] <= '9'):
			j := i + 1
			for j < len(s) && (s[j] == '_' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9' || s[j] >= 0x80) {
				j++
			}
			if j < len(s) && s[j] == '$' {
				tag := s[i : j+1]
				end := strings.Index(s[j+1:], tag)
				if end < 0 {
					out = append(out, sqlToken{tkString, s[j+1:]})
					i = len(s)
				} else {
					out = append(out, sqlToken{tkString, s[j+1 : j+1+end]})
					i = j + 1 + end + len(tag)
				}
				continue
			}
			out = append(out, sqlToken{tkOther, "$"})
			i++
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
			j := i
			for j < len(s) && (s[j] == '_' || s[j] == '$' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9' || s[j] >= 0x80) {
				j++
			}
			out = append(out, sqlToken{tkWord, strings.ToLower(s[i:j])})
			i = j
		default:
			out = append(out, sqlToken{tkOther, string(c)})
			i++
		}
	}
	return out
}

// quoted reads a quoted token starting at s[0] == q, with doubled quotes
// inside (and backslash escapes when backslash is set), returning its
// value and length.
func quoted(s string, q byte, backslash bool) (string, int) {
	var b strings.Builder
	i := 1
	for i < len(s) {
		c := s[i]
		switch {
		case backslash && c == '\\' && i+1 < len(s):
			b.WriteByte(s[i+1])
			i += 2
		case c == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i += 2
		case c == q:
			return b.String(), i + 1
		default:
			b.WriteByte(c)
			i++
		}
	}
	return b.String(), len(s)
}
