package router

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// DDLMode says what the router does with a schema-changing statement (the
// lexer's stmtInfo.ddl: CREATE, ALTER or DROP of a table, index, view,
// sequence, function, type, ...; COMMENT ON; GRANT or REVOKE ON) sent for a
// tenant, which changes that tenant's shard only.
type DDLMode string

// DDL modes.
const (
	// DDLWarn runs the statement and sends the client a WARNING (SQLSTATE
	// 01000) naming the shard, before the statement's own answer.
	DDLWarn DDLMode = "warn"
	// DDLRefuse refuses the statement with 0A000 and runs nothing (inside a
	// transaction, the transaction is aborted as a server error would).
	DDLRefuse DDLMode = "refuse"
	// DDLAllow runs it silently.
	DDLAllow DDLMode = "allow"
)

// ddlHint is what every answer about a schema change through the router
// says to do instead.
const ddlHint = "Apply schema changes to every shard with `pgtenant migrate up` (write one with `pgtenant migrate create NAME`); `pgtenant migrate status` shows what each shard has."

// ddlWarning is the notice for a schema change that ran on shard only.
func ddlWarning(shard string) []byte {
	return wire.AppendError(nil, &wire.Error{Severity: "WARNING", Code: "01000",
		Message: fmt.Sprintf("this schema change applies to %s only", shard),
		Detail:  "Statements sent through the router run on the tenant's shard; the other shards do not get this change, and pgtenant migrate does not know of it.",
		Hint:    ddlHint})
}

// ddlRefusedError refuses a schema change for one shard (Config.DDL refuse).
func ddlRefusedError(shard string) *wire.Error {
	return &wire.Error{Code: "0A000",
		Message: fmt.Sprintf("schema changes through the router are refused: this one would change %s only", shard),
		Detail:  "The router's ddl setting is refuse.", Hint: ddlHint}
}

// ddlCheck decides a statement about to run for tenant: for a schema
// change (info.ddl) it returns the refusal (DDLRefuse), or the notice to
// queue before the statement's answer (DDLWarn, the default). Other
// statements cost one test of info.ddl. (The change is counted when the
// statement is sent, see ddlSent: not for one refused.)
func (ss *session) ddlCheck(info *stmtInfo, tenant string) ([]byte, *wire.Error) {
	if !info.ddl || tenant == "" || tenant == anyTenant || tenant == descTenant || ss.srv.cfg.DDL == DDLAllow {
		return nil, nil
	}
	shard := "tenant " + tenant + "'s shard"
	if m := ss.srv.mp.Load(); m != nil {
		if loc, e := ss.locate(m, tenant); e == nil {
			shard = loc.Shard.Schema
		}
	}
	if ss.srv.cfg.DDL == DDLRefuse {
		return nil, ddlRefusedError(shard)
	}
	return ddlWarning(shard), nil
}

// ddlSent counts a schema change about to be sent to a server (info.ddl):
// later Parses are analysed afresh (stale.go). Server-wide, so only for a
// statement past the refusals and routing: a refused one would make every
// session prepare its statements again, as often as a client sends it.
func (ss *session) ddlSent(info *stmtInfo) {
	if info.ddl {
		ss.srv.schemaChanged()
	}
}

// bodyDDL reports whether the statement starting at toks[i], in a DO body
// or a string one EXECUTEs (see guard), changes the shard's schema:
// CREATE, ALTER or DROP of something neither temporary nor outside the
// shard's schema; COMMENT ON; GRANT or REVOKE ... ON (as the lexer decides
// for a statement sent alone). A DO block is seen; a function or procedure
// the statement calls is not.
//
// A statement the lexer judges by more than its first words (SELECT ...
// INTO under WITH or EXPLAIN ANALYZE, EXPLAIN ANALYZE CREATE TABLE ... AS,
// IMPORT FOREIGN SCHEMA, SECURITY LABEL: ddlByLexer) is given to it. In
// PL/pgSQL itself (body) a SELECT's INTO, under WITH or EXPLAIN too, names
// variables; in a string the block EXECUTEs it creates a table.
func bodyDDL(toks []gtok, i int, body bool) bool {
	w := toks[i].text
	if toks[i].kind != tWord {
		return false
	}
	if slices.ContainsFunc(ddlByLexer, func(f string) bool { return eqFold(w, f) }) {
		end := i
		for end < len(toks) && !(toks[end].kind == tPunct && toks[end].text == ";") {
			end++
		}
		if body && !ddlStatementWord(w) && !slices.ContainsFunc(toks[i:end], func(t gtok) bool { return t.kind == tWord && eqFold(t.text, "create") }) {
			return false // SELECT ... INTO variables
		}
		return classify(joinToks(toks[i:end])).ddl
	}
	switch {
	case eqFold(w, "comment"):
		// (ON after it: not an assignment to a variable named comment.)
		return i+1 < len(toks) && toks[i+1].kind == tWord && eqFold(toks[i+1].text, "on")
	case eqFold(w, "grant"), eqFold(w, "revoke"):
		for j := i + 1; j < len(toks) && !(toks[j].kind == tPunct && toks[j].text == ";"); j++ {
			if toks[j].kind == tWord && eqFold(toks[j].text, "on") {
				return true // privileges on objects, not a role's membership
			}
		}
		return false
	case !(eqFold(w, "create") || eqFold(w, "alter") || eqFold(w, "drop")):
		return false
	}
	for j := i + 1; j < len(toks) && j <= i+8; j++ {
		t := toks[j]
		switch {
		case t.kind == tPunct && t.text == ";":
			return true
		case t.kind != tWord && t.kind != tQuotedIdent:
		case hasPrefixFold(identText(t), "pg_temp"):
			return false
		case t.kind != tWord:
		case eqFold(t.text, "or"), eqFold(t.text, "replace"), eqFold(t.text, "global"), eqFold(t.text, "local"):
		case j == i+1 || eqFold(toks[j-1].text, "replace") || eqFold(toks[j-1].text, "global") || eqFold(toks[j-1].text, "local"):
			if eqFold(t.text, "temp") || eqFold(t.text, "temporary") || ddlOutside(t.text) {
				return false
			}
		}
	}
	return true
}

// withScan follows a WITH statement for the lexer, to tell an INSERT or
// MERGE that starts a command (its INTO names the table it writes: DML)
// from a column label spelled insert or merge before a SELECT's INTO
// (which creates a table: WITH x AS (SELECT 1) SELECT 1 insert INTO t).
// A command comes right after '(' (a CTE's body), or starts the main
// statement: right after the ')' that ends the CTE list, or after the
// list's SEARCH or CYCLE clause (... SET col, ... USING col).
type withScan struct {
	depth int
	// openAt, closeAt and cmdAt are the positions (lexer.sinceSemi) of
	// the last '(' and ')', and of an INSERT or MERGE command.
	openAt, closeAt, cmdAt int
	// main: the main statement started; tail: in a SEARCH or CYCLE clause.
	main, tail bool
}

// punct notes a punctuation character of the statement at position at.
func (ws *withScan) punct(c byte, at int) {
	switch {
	case c == '(':
		ws.depth++
		ws.openAt = at
	case c == ')':
		ws.depth--
		ws.closeAt = at
	case c == ',' && ws.depth == 0 && ws.tail && ws.main:
		ws.main, ws.tail = false, false // another CTE after a CYCLE clause
	}
}

// word notes a word w of the statement at position at; prev2 is the word
// two words before it.
func (ws *withScan) word(w string, at int, prev2 string) {
	cmd := ws.openAt > 0 && at == ws.openAt+1
	if !cmd && ws.depth == 0 && !ws.main {
		afterList := ws.closeAt > 0 && at == ws.closeAt+1
		switch {
		case afterList && eqFold(w, "as"):
			// (after a CTE's column list)
		case afterList && (eqFold(w, "search") || eqFold(w, "cycle")):
			ws.tail = true
		case afterList:
			cmd = true
		case ws.tail && (eqFold(prev2, "using") || (eqFold(prev2, "set") && !eqFold(w, "to") && !eqFold(w, "using"))):
			cmd = true
		}
		ws.main = cmd
	}
	if cmd && (eqFold(w, "insert") || eqFold(w, "merge")) {
		ws.cmdAt = at
	}
}

// ddlByLexer are the first words of statements in a DO body that bodyDDL
// hands to the lexer (classify) whole.
var ddlByLexer = []string{"select", "with", "explain", "import", "security"}

// ddlStatementWord reports whether a statement starting with w changes the
// schema whatever follows: COMMENT ON, SECURITY LABEL ... ON, IMPORT
// FOREIGN SCHEMA (foreign tables into a schema of the node).
func ddlStatementWord(w string) bool {
	return eqFold(w, "comment") || eqFold(w, "security") || eqFold(w, "import")
}

// joinToks is the text of toks, a space between each two.
func joinToks(toks []gtok) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(t.text)
	}
	return b.String()
}

// ddlModifiers are words between CREATE, ALTER or DROP and the kind of
// object; ddlOnKinds are kinds of object that live in the schema of the
// table named after ON; ddlRelKinds are kinds a temporary table's name
// (found first in the search path) can stand for; ddlNameSkip are words
// between the kind and the object's name.
var (
	ddlModifiers = []string{"or", "replace", "global", "local", "temp", "temporary", "unlogged", "unique", "materialized", "recursive", "foreign"}
	ddlOnKinds   = []string{"index", "trigger", "policy", "rule"}
	ddlRelKinds  = []string{"table", "index", "view", "sequence"}
	ddlNameSkip  = []string{"if", "not", "exists", "only", "concurrently"}
)

// inFold reports whether w is one of words, in any case.
func inFold(words []string, w string) bool {
	return slices.ContainsFunc(words, func(f string) bool { return eqFold(w, f) })
}

// shardSchemaChange reports whether sql, which the lexer found to change
// a schema (stmtInfo.ddl), changes the shard's: not when each statement
// the lexer would take for one changes instead a temporary table made by
// an earlier statement of the text (CREATE TEMP TABLE x (...); CREATE
// INDEX ON x (...)), or an object of a schema that is no shard's
// (CREATE TABLE public.x: the node's, as CREATE SCHEMA is). Only texts
// the lexer flagged come here, so it may allocate.
func shardSchemaChange(sql string) bool {
	var stmts [][]gtok
	toks := gtoks(sql)
	for start, i := 0, 0; i <= len(toks); i++ {
		if i == len(toks) || (toks[i].kind == tPunct && toks[i].text == ";") {
			if i > start {
				stmts = append(stmts, toks[start:i])
			}
			start = i + 1
		}
	}
	if len(stmts) <= 1 {
		return len(stmts) == 0 || !ddlElsewhere(stmts[0], nil)
	}
	var temps []string
	// (A search_path set in the text may put pg_temp after the shard's
	// schema: then a name finds the shard's table first.)
	pathSet := slices.ContainsFunc(toks, func(t gtok) bool { return strings.Contains(strings.ToLower(t.text), "search_path") })
	for _, st := range stmts {
		if st[0].kind == tWord && inFold(tempEnders, st[0].text) {
			// The temporary tables made so far may be gone (ON COMMIT
			// DROP, a rollback, DISCARD TEMP): the names find the
			// shard's tables again.
			temps = nil
			continue
		}
		if name := tempCreated(st); name != "" {
			if !pathSet {
				temps = append(temps, name)
			}
			continue
		}
		if !ddlElsewhere(st, temps) {
			if classify(joinToks(st)).ddl {
				return true
			}
			continue
		}
		if eqFold(st[0].text, "drop") || slices.ContainsFunc(st, func(t gtok) bool { return t.kind == tWord && eqFold(t.text, "rename") }) {
			// Dropped or renamed: the name finds the shard's table again.
			temps = slices.DeleteFunc(temps, func(n string) bool {
				return slices.ContainsFunc(st, func(t gtok) bool { return (t.kind == tWord || t.kind == tQuotedIdent) && foldedName(t) == n })
			})
		}
	}
	return false
}

// tempEnders are the statements after which a temporary table made
// earlier in a string may be gone (see shardSchemaChange).
var tempEnders = []string{"commit", "end", "rollback", "abort", "discard", "prepare"}

// tempCreated returns the name of the temporary table, view or sequence
// st creates without a schema (CREATE [GLOBAL|LOCAL] TEMP TABLE [IF NOT
// EXISTS] x), folded as the server folds it, or "".
func tempCreated(st []gtok) string {
	if len(st) < 3 || !eqFold(st[0].text, "create") {
		return ""
	}
	temp, i := false, 1
	for ; i < len(st) && st[i].kind == tWord && inFold(ddlModifiers, st[i].text); i++ {
		temp = temp || eqFold(st[i].text, "temp") || eqFold(st[i].text, "temporary")
	}
	if !temp || i >= len(st) || !inFold(ddlRelKinds, st[i].text) {
		return ""
	}
	for i++; i < len(st) && st[i].kind == tWord && inFold(ddlNameSkip, st[i].text); i++ {
	}
	if i >= len(st) || (st[i].kind != tWord && st[i].kind != tQuotedIdent) || strings.Contains(st[i].text, ".") {
		return ""
	}
	return foldedName(st[i])
}

// foldedName is an identifier as the server reads it: a word lower-cased,
// a quoted one as written.
func foldedName(t gtok) string {
	if t.kind == tQuotedIdent {
		return identText(t)
	}
	return strings.ToLower(t.text)
}

// ddlElsewhere reports whether st, a CREATE, ALTER or DROP, changes
// objects outside the shard's schema only: each of its objects named in a
// schema that is not a shard's (nor pg_temp: the lexer's already), or,
// for a table, index, view or sequence, by a name in temps.
func ddlElsewhere(st []gtok, temps []string) bool {
	if len(st) < 3 || st[0].kind != tWord || !(eqFold(st[0].text, "create") || eqFold(st[0].text, "alter") || eqFold(st[0].text, "drop")) {
		return false
	}
	i := 1
	for ; i < len(st) && st[i].kind == tWord && inFold(ddlModifiers, st[i].text); i++ {
	}
	if i >= len(st) || st[i].kind != tWord {
		return false
	}
	kind := st[i].text
	// A name that refers to a relation that exists (not one CREATE
	// makes: that goes in the shard's schema) finds a temporary one first.
	refers := !eqFold(st[0].text, "create")
	if inFold(ddlOnKinds, kind) {
		for j := i + 1; j < len(st) && !(st[j].kind == tPunct && st[j].text == "("); j++ {
			if st[j].kind == tWord && eqFold(st[j].text, "on") {
				i, refers = j, true // the table's schema is the object's
				break
			}
		}
	}
	for i++; i < len(st) && st[i].kind == tWord && inFold(ddlNameSkip, st[i].text); i++ {
	}
	for {
		var schema string
		switch {
		case i >= len(st):
			return false
		case st[i].kind == tWord && strings.Contains(st[i].text, "."):
			parts := strings.Split(st[i].text, ".")
			schema = parts[max(0, len(parts)-2)] // db.schema.name too
			if strings.HasSuffix(st[i].text, ".") && i+1 < len(st) && st[i+1].kind == tQuotedIdent {
				i++ // schema."Name"
			}
		case st[i].kind == tQuotedIdent && i+2 < len(st) && st[i+1].kind == tPunct && st[i+1].text == ".":
			schema = identText(st[i]) // "Schema".name
			i += 2
		case st[i].kind == tWord || st[i].kind == tQuotedIdent:
			if !refers || !inFold(ddlRelKinds, kind) || !slices.Contains(temps, foldedName(st[i])) {
				return false
			}
		default:
			return false
		}
		if schema != "" && (hasPrefixFold(schema, "shard_") || hasPrefixFold(schema, "pg_temp")) {
			return false
		}
		// A list (DROP TABLE a, b): each must be elsewhere.
		if i+2 < len(st) && st[i+1].kind == tPunct && st[i+1].text == "," && eqFold(st[0].text, "drop") {
			i += 2
			continue
		}
		return true
	}
}
