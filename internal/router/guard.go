package router

import (
	"strconv"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// guardFinding is what guard found in a statement text that would change
// a setting the router owns (search_path, pgtenant.tenant_id, role, ...)
// behind its back.
type guardFinding struct {
	// err refuses the text at once.
	err *wire.Error
	// params are the 1-based bind parameters given as set_config's
	// setting name: their values are checked at Bind (checkParams).
	params []int
	// prepare: a DO body (or a string EXECUTE runs there) starts a
	// statement with PREPARE, which outlives the transaction; dealloc: one
	// with DEALLOCATE, which could drop the router's own statements.
	prepare, dealloc bool
	// reserved is a statement name starting with pgtenant_ (the router's
	// own statements) that a PREPARE or EXECUTE names; reservedDealloc one
	// that a DEALLOCATE names.
	reserved, reservedDealloc string
	// badName: a PREPARE or DEALLOCATE names its statement U&"...", which
	// could spell any name.
	badName bool
	// prepares are the names the text's own statements PREPARE, in order
	// (not those inside DO bodies); deallocs those they DEALLOCATE, and
	// deallocAll is set for DEALLOCATE ALL: see session.sqlStmts.
	prepares, deallocs []string
	deallocAll         bool
	// sessionLock: a DO body calls a session-level advisory lock function
	// (see stmtInfo.sessionLock).
	sessionLock bool
	// ddl: a DO body (or a string it EXECUTEs) starts a statement that
	// changes the shard's schema (see bodyDDL and stmtInfo.ddl).
	ddl bool
}

// guardDepth bounds how deep guard looks into string literals inside DO
// bodies (EXECUTE 'SET ...' inside a DO body is depth 2).
const guardDepth = 4

// guardScan scans sql, classified as info, with guard when the lexer asked
// for it (info.guardScan) and the statement is not the session's own path
// setting; a schema change the scan finds in a DO body makes info.ddl.
// Nil when there is nothing to refuse.
func (ss *session) guardScan(sql string, info *stmtInfo) *guardFinding {
	if !info.guardScan || ss.pathStmt(info) {
		return nil
	}
	g := guard(sql)
	info.ddl = info.ddl || (g != nil && g.ddl)
	return g
}

// guard looks at every statement of sql, and into DO bodies (a string
// literal, and the string literals in it, which EXECUTE may run), for
// what changes a setting the router owns: SET or RESET of search_path,
// role, session authorization or pgtenant.* (but pgtenant.tenant) in any
// statement and spelling (quoted, qualified, any case, comments between
// the words); set_config or pg_catalog.set_config (quoted or not) of such
// a setting, or with a setting name that is neither a string literal ('...',
// E'...', $$...$$) nor a bind parameter; UPDATE of pg_settings; and EXECUTE of
// the router's own prepared statements. It returns nil when it finds
// nothing. What a function or procedure runs is not seen (see doc.go).
func guard(sql string) *guardFinding {
	var g guardFinding
	guardText(sql, false, 0, &g)
	if g.err == nil && len(g.params) == 0 && !g.prepare && !g.dealloc && g.reserved == "" && g.reservedDealloc == "" &&
		!g.badName && len(g.prepares) == 0 && len(g.deallocs) == 0 && !g.deallocAll && !g.sessionLock && !g.ddl {
		return nil
	}
	return &g
}

// gtok is one token of guard's scan.
type gtok struct {
	kind tokKind
	text string
}

// guardText scans one text; body is set inside a DO body (PL/pgSQL), where
// a statement may also start after BEGIN, THEN, ELSE or LOOP.
func guardText(sql string, body bool, depth int, g *guardFinding) {
	guardToks(gtoks(sql), body, depth, g)
}

// gtoks splits sql into guard's tokens (comments dropped).
func gtoks(sql string) []gtok {
	var toks []gtok
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' && sql[i] != '\r' { // a -- comment ends at either, as in PostgreSQL
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			i = skipBlockComment(sql, i)
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < n && sql[i+1] == '\''):
			start := i
			i = skipString(sql, i)
			toks = append(toks, gtok{tString, sql[start:i]})
		case c == '"':
			start := i
			i = skipQuotedIdent(sql, i)
			toks = append(toks, gtok{tQuotedIdent, sql[start:i]})
		case c == '$':
			start := i
			var k tokKind
			i, k = scanDollar(sql, i)
			if k == 0 {
				k = tPunct
			}
			toks = append(toks, gtok{k, sql[start:i]})
		case isIdentStart(c):
			start := i
			for i < n && (isIdent(sql[i]) || sql[i] == '.') {
				i++
			}
			toks = append(toks, gtok{tWord, sql[start:i]})
		case c >= '0' && c <= '9':
			start := i
			for i < n && (isIdent(sql[i]) || sql[i] == '.') {
				i++
			}
			toks = append(toks, gtok{tNumber, sql[start:i]})
		default:
			toks = append(toks, gtok{tPunct, sql[i : i+1]})
			i++
		}
	}
	return toks
}

// guardToks checks the tokens of one text (see guard).
func guardToks(toks []gtok, body bool, depth int, g *guardFinding) {
	isWord := func(i int, w string) bool {
		return i >= 0 && i < len(toks) && toks[i].kind == tWord && strings.EqualFold(toks[i].text, w)
	}
	isPunct := func(i int, p string) bool {
		return i < len(toks) && toks[i].kind == tPunct && toks[i].text == p
	}
	start := true // the next token starts a statement
	stmtDo := false
	for i := 0; i < len(toks) && g.err == nil; i++ {
		t := toks[i]
		atStart := start
		start = false
		if t.kind == tPunct && t.text == ";" {
			start, stmtDo = true, false
			continue
		}
		if atStart {
			stmtDo = isWord(i, "do")
			if depth > 0 && !g.ddl {
				g.ddl = bodyDDL(toks, i, body)
			}
			switch {
			case isWord(i, "set"):
				if name := setTarget(toks, i+1); name != "" && isOwnedSetting(name) {
					g.err = reservedSetError(name)
				} else if lexSetting(name) {
					g.err = checkLexSet(name, toks, i+1)
				}
			case isWord(i, "reset"):
				if name := resetTarget(toks, i+1); name != "" && isOwnedSetting(name) {
					g.err = reservedSetError(name)
				} else if depth > 0 && isWord(i+1, "all") {
					// Resets the shard's search_path and the tenant id
					// behind the router's back (it sets them again after
					// a RESET ALL of its own statement only).
					g.err = &wire.Error{Code: "0A000", Message: "RESET ALL inside a DO block is not supported through pgtenant",
						Hint: "It would reset the tenant's search_path and tenant id: send RESET ALL as a statement of its own."}
				}
			case isWord(i, "prepare") && !isWord(i+1, "transaction"):
				name, ok := stmtNameAt(toks, i+1)
				switch {
				case !ok:
					g.badName = true
				case hasPrefixFold(name, routerStmtPrefix):
					g.reserved = name
				case depth > 0:
					g.prepare = true
				default:
					g.prepares = append(g.prepares, name)
				}
			case isWord(i, "deallocate"):
				j := i + 1
				if isWord(j, "prepare") {
					j++
				}
				name, ok := stmtNameAt(toks, j)
				switch {
				case depth > 0:
					g.dealloc = true
				case ok && toks[j].kind == tWord && strings.EqualFold(name, "all"):
					g.deallocAll = true
				case !ok:
					g.badName = true
				case hasPrefixFold(name, routerStmtPrefix):
					g.reservedDealloc = name
				default:
					g.deallocs = append(g.deallocs, name)
				}
			}
		}
		if body && t.kind == tWord && (isWord(i, "begin") || isWord(i, "then") || isWord(i, "else") || isWord(i, "loop")) {
			start = true
			continue
		}
		switch t.kind {
		case tString:
			if depth < guardDepth && (stmtDo || body) {
				// A DO body, or a string in one (EXECUTE runs it).
				for _, v := range literalValues(t.text) {
					guardText(v, stmtDo, depth+1, g)
				}
			}
		case tWord, tQuotedIdent:
			name := identText(t)
			if depth > 0 && (isSessionLockFunc(name) || (t.kind == tQuotedIdent && i >= 2 && toks[i-1].text == "&" &&
				strings.EqualFold(toks[i-2].text, "u") && unicodeIdentCouldBe(t.text, isSessionLockFunc))) {
				g.sessionLock = true
			}
			switch {
			case lastPart(name) == "set_config" && isPunct(i+1, "("):
				g.setConfigArg(toks, i+2, body || depth > 0)
			case lastPart(name) == "pg_settings" && (isWord(nameStart(toks, i)-1, "update") || (isWord(nameStart(toks, i)-1, "only") && isWord(nameStart(toks, i)-2, "update"))):
				g.err = &wire.Error{Code: "0A000", Message: "UPDATE of pg_settings is not supported through pgtenant",
					Hint: "Use SET, or set_config('name', value, is_local) with the name as a literal."}
			case name == "execute" && t.kind == tWord && !body && i+1 < len(toks) &&
				(toks[i+1].kind == tWord || toks[i+1].kind == tQuotedIdent) && strings.HasPrefix(identText(toks[i+1]), routerStmtPrefix):
				g.reserved = identText(toks[i+1])
			}
		}
	}
}

// stmtNameAt reads the prepared statement name at toks[i] as the server
// folds it: a word lower-cased, a quoted identifier as written. ok is false
// for a U&"..." name (not decoded) or none at all.
func stmtNameAt(toks []gtok, i int) (string, bool) {
	if i >= len(toks) {
		return "", false
	}
	switch t := toks[i]; {
	case t.kind == tWord && strings.EqualFold(t.text, "u") && i+1 < len(toks) && toks[i+1].kind == tPunct && toks[i+1].text == "&":
		return "", false
	case t.kind == tWord:
		return strings.ToLower(t.text), true
	case t.kind == tQuotedIdent:
		q := t.text
		if len(q) >= 2 && q[len(q)-1] == '"' {
			q = q[1 : len(q)-1]
		} else {
			q = q[1:]
		}
		return strings.ReplaceAll(q, `""`, `"`), true
	}
	return "", false
}

// nameStart is the index of the first token of the qualified name that
// ends at toks[i] (pg_catalog."x", "a"."b", a . b).
func nameStart(toks []gtok, i int) int {
	for i > 0 {
		p := toks[i-1]
		switch {
		case p.kind == tWord && strings.HasSuffix(p.text, "."):
			i--
		case p.kind == tPunct && p.text == "." && i > 1 && (toks[i-2].kind == tWord || toks[i-2].kind == tQuotedIdent):
			i -= 2
		default:
			return i
		}
	}
	return i
}

// setConfigArg checks set_config's first argument, at toks[i].
func (g *guardFinding) setConfigArg(toks []gtok, i int, inBody bool) {
	if i+1 < len(toks) && toks[i+1].kind == tPunct && toks[i+1].text == "," {
		switch t := toks[i]; t.kind {
		case tString:
			for _, v := range literalValues(t.text) {
				name := strings.ToLower(strings.TrimSpace(v))
				if isOwnedSetting(name) {
					g.err = reservedSetError(name)
					return
				}
				if lexSetting(name) && !setConfigValueOK(name, toks, i+2) {
					g.err = lexSettingError(name, "(set_config)")
					return
				}
			}
			return
		case tParam:
			if !inBody {
				if p, err := strconv.Atoi(t.text[1:]); err == nil && p > 0 {
					g.params = append(g.params, p)
					return
				}
			}
		}
	}
	g.err = &wire.Error{Code: "0A000", Message: "set_config's setting name must be a string literal or a bind parameter through pgtenant",
		Hint: "Write the name as a literal, as in set_config('app.user_id', $1, true); search_path, role and pgtenant.* other than pgtenant.tenant are set by the router."}
}

// setConfigValueOK reports whether set_config's second argument, at
// toks[i], is a literal value of the lexSetting name that the router can
// read statements under (see lexsafe.go).
func setConfigValueOK(name string, toks []gtok, i int) bool {
	if i+1 >= len(toks) || toks[i].kind != tString || toks[i+1].kind != tPunct || toks[i+1].text != "," {
		return false
	}
	for _, v := range literalValues(toks[i].text) {
		if !lexValueOK(name, v) {
			return false
		}
	}
	return true
}

// checkParams checks the bind parameters that name set_config's setting.
func (g *guardFinding) checkParams(bind []byte) *wire.Error {
	for _, p := range g.params {
		v, _, ok := wire.BindParam(bind, p-1)
		if !ok || v == nil {
			continue // set_config of a NULL name fails on the server
		}
		if name := strings.ToLower(strings.TrimSpace(string(v))); isOwnedSetting(name) {
			return reservedSetError(name)
		} else if lexSetting(name) {
			// Its value may be a parameter too: set it with SET.
			return lexSettingError(name, "(set_config)")
		}
	}
	return nil
}

// setTarget returns the lowercase setting a SET statement (its words after
// SET start at toks[i]) changes: "session authorization" and "role" too.
func setTarget(toks []gtok, i int) string {
	w := func(i int) string {
		if i < len(toks) && toks[i].kind == tWord {
			return strings.ToLower(toks[i].text)
		}
		return ""
	}
	switch w(i) {
	case "local":
		i++
	case "session":
		switch w(i + 1) {
		case "authorization":
			return "session_authorization"
		case "characteristics":
			return ""
		}
		i++
	}
	if w(i) == "schema" && i+1 < len(toks) && toks[i+1].kind == tString {
		return "search_path" // SET SCHEMA 'x' is SET search_path TO 'x'
	}
	return settingName(toks, i)
}

// resetTarget is setTarget for RESET.
func resetTarget(toks []gtok, i int) string {
	if i+1 < len(toks) && toks[i].kind == tWord && strings.EqualFold(toks[i].text, "session") &&
		toks[i+1].kind == tWord && strings.EqualFold(toks[i+1].text, "authorization") {
		return "session_authorization"
	}
	return settingName(toks, i)
}

// settingName reads a possibly qualified, possibly quoted setting name at
// toks[i] as Postgres would look it up (case-insensitively). A name written
// U&"..." comes back as "u&" and the quoted text: never decoded, always
// refused (see isOwnedSetting).
func settingName(toks []gtok, i int) string {
	var b strings.Builder
	for ; i < len(toks); i++ {
		t := toks[i]
		if t.kind != tWord && t.kind != tQuotedIdent {
			break
		}
		if t.kind == tWord && strings.EqualFold(t.text, "u") && i+2 < len(toks) && toks[i+1].text == "&" && toks[i+2].kind == tQuotedIdent {
			return "u&" + toks[i+2].text
		}
		b.WriteString(identText(t))
		if t.kind == tWord && strings.HasSuffix(t.text, ".") {
			continue // pgtenant."tenant_id"
		}
		if i+1 < len(toks) && toks[i+1].kind == tPunct && toks[i+1].text == "." {
			b.WriteByte('.')
			i++
			continue
		}
		break
	}
	return b.String()
}

// identText is a word lowercased, or a quoted identifier's text, lowercased
// too: setting names are looked up without regard to case.
func identText(t gtok) string {
	if t.kind == tQuotedIdent {
		s := t.text
		if len(s) >= 2 && s[len(s)-1] == '"' {
			s = s[1 : len(s)-1]
		} else {
			s = s[1:]
		}
		return strings.ToLower(strings.ReplaceAll(s, `""`, `"`))
	}
	return strings.ToLower(t.text)
}

// lastPart is what follows the last '.' of a qualified name.
func lastPart(name string) string {
	if k := strings.LastIndexByte(name, '.'); k >= 0 {
		return name[k+1:]
	}
	return name
}

// isOwnedSetting reports settings the router sets itself, which no client
// statement may change: search_path, role, session authorization and
// pgtenant.* (pgtenant.tenant is the router's own tenant selection, never a
// server setting the router reads).
func isOwnedSetting(name string) bool {
	switch name {
	case "search_path", "role", "session_authorization":
		return true
	}
	if strings.HasPrefix(name, "u&") {
		return true // a Unicode-escaped name: it could spell any of them
	}
	return strings.HasPrefix(name, "pgtenant.") && name != tenantSetting
}

// literalValues decodes a string literal token. A '...' literal is
// decoded both as a standard string and with backslash escapes (the
// client may have turned standard_conforming_strings off), so that a name
// spelled with escapes is caught either way.
func literalValues(lit string) []string {
	switch {
	case lit[0] == '$':
		return []string{unquoteString(lit)}
	case lit[0] == 'E' || lit[0] == 'e':
		return []string{unescapeString(lit[1:])}
	}
	std := unquoteString(lit)
	if strings.IndexByte(lit, '\\') < 0 {
		return []string{std}
	}
	return []string{std, unescapeString(lit)}
}

// unescapeString decodes a '...' literal with Postgres' backslash escapes
// (E'...' strings): \b \f \n \r \t, octal \ooo, hex \xhh, \uXXXX, \UXXXXXXXX,
// and \c for any other c.
func unescapeString(q string) string {
	if len(q) >= 2 && q[len(q)-1] == '\'' {
		q = q[1 : len(q)-1]
	} else if len(q) >= 1 {
		q = q[1:]
	}
	var b strings.Builder
	for i := 0; i < len(q); i++ {
		c := q[i]
		if c == '\'' && i+1 < len(q) && q[i+1] == '\'' {
			b.WriteByte('\'')
			i++
			continue
		}
		if c != '\\' || i+1 >= len(q) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := q[i]; {
		case e == 'b':
			b.WriteByte('\b')
		case e == 'f':
			b.WriteByte('\f')
		case e == 'n':
			b.WriteByte('\n')
		case e == 'r':
			b.WriteByte('\r')
		case e == 't':
			b.WriteByte('\t')
		case e >= '0' && e <= '7':
			v, j := 0, i
			for j < len(q) && j < i+3 && q[j] >= '0' && q[j] <= '7' {
				v = v*8 + int(q[j]-'0')
				j++
			}
			b.WriteByte(byte(v))
			i = j - 1
		case e == 'x' && i+1 < len(q) && isHex(q[i+1]):
			j := i + 1
			for j < len(q) && j < i+3 && isHex(q[j]) {
				j++
			}
			v, _ := strconv.ParseUint(q[i+1:j], 16, 8)
			b.WriteByte(byte(v))
			i = j - 1
		case (e == 'u' && i+4 < len(q)) || (e == 'U' && i+8 < len(q)):
			k := 4
			if e == 'U' {
				k = 8
			}
			v, err := strconv.ParseUint(q[i+1:i+1+k], 16, 32)
			if err != nil {
				b.WriteByte(e)
				continue
			}
			b.WriteRune(rune(v))
			i += k
		default:
			b.WriteByte(e)
		}
	}
	return b.String()
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}
