package router

import (
	"strconv"
	"strings"
)

// stmtKind is a statement's leading keyword, as far as routing cares.
type stmtKind uint8

const (
	kOther stmtKind = iota
	kSelect
	kValues
	kBegin
	kCommit
	kRollback
	kSet
	kReset
	kShow
	kListen
	kUnlisten
	kDiscard
	kPrepare
	kDeallocate
	kSavepoint
	kCopy
)

// tenantOp is what a statement does to the pgtenant.tenant setting.
type tenantOp uint8

const (
	opNone tenantOp = iota
	opSet
	opSetLocal
	opReset
	opShow
	opSetConfig // SELECT set_config('pgtenant.tenant', v, is_local)
)

// stmtInfo is what the lexer learns about one statement text.
type stmtInfo struct {
	kind stmtKind
	// hint is the tenant named by a /* tenant: x */ comment.
	hint    string
	hasHint bool
	// multi is set when the text holds more than one statement.
	multi bool
	// noShard statements can run on any node without a tenant (SELECT
	// without FROM, SHOW).
	noShard bool

	op tenantOp
	// val is the literal value of SET/set_config; param is set_config's
	// 1-based $N when the value is a bind parameter.
	val     string
	param   int
	isLocal bool
	// plainSetConfig is set when the statement is exactly SELECT
	// set_config('pgtenant.tenant', v, <literal bool>): the router answers
	// it itself.
	plainSetConfig bool
	// setName is the lowercase name a SET/RESET/SHOW statement is about.
	setName string
	// reservedSet is set for SET/RESET of a setting the router owns
	// (search_path, pgtenant.* other than pgtenant.tenant, role).
	reservedSet bool
	// pathSetConfig is set when the statement is exactly SELECT
	// [pg_catalog.]set_config('search_path', v, <literal bool>), v a literal
	// (val) or a bind parameter (param), isLocal its third argument: in
	// session pool mode the client's own search_path (see session.pathStmt).
	pathSetConfig bool
	// paramSetConfig is set when the statement is exactly SELECT
	// [pg_catalog.]set_config('x', $N, b), param N, b a literal that is not
	// true, x a setting the router does not own: a session setting whose
	// value comes with each Bind (bindSetConfig).
	paramSetConfig bool
	// setDefault is set for SET name TO DEFAULT (or = DEFAULT), which is RESET.
	setDefault bool
	// callsSetConfig is set when the text calls set_config anywhere;
	// localSetConfig when the statement is exactly SELECT set_config('x',
	// v, true) of a setting x other than search_path and pgtenant.* (the
	// row-level-security idiom), which leaves the router's settings alone.
	callsSetConfig, localSetConfig bool
	// laterSet and laterDiscard are set when a statement after the first
	// starts with SET or RESET, or with DISCARD or DEALLOCATE; laterListen
	// with LISTEN; laterSavepoint with SAVEPOINT or RELEASE (savepoint.go).
	laterSet, laterDiscard, laterListen, laterSavepoint bool
	// laterTenant is set when a statement after the first is SET [LOCAL],
	// RESET or SHOW of pgtenant.tenant.
	laterTenant bool
	// firstEnd is the offset just past the ';' that ends the first
	// statement (0 when the text holds one statement).
	firstEnd int
	// endsTxn is set when a statement ends the transaction: COMMIT, END,
	// ROLLBACK or ABORT (not ROLLBACK TO, COMMIT/ROLLBACK PREPARED), with
	// or without AND CHAIN, or PREPARE TRANSACTION. txnThenMore is set when
	// another statement follows such a one.
	endsTxn, txnThenMore bool
	// resetThenMore is set when another statement follows a RESET ALL,
	// which resets the shard's search_path and tenant id for it.
	resetThenMore bool
	// rollbackTo is set for a statement starting with ROLLBACK ... TO.
	rollbackTo bool
	// callsProc is set when a statement starts with CALL or DO, which may
	// commit or roll back part way through.
	callsProc bool
	// hint2 is another tenant named by a second hint comment in the same
	// text: the text is refused (25001), as one query runs on one shard.
	hint2 string
	// createTemp is set when a statement creates a temporary object
	// (CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY ..., CREATE of a name in
	// pg_temp, SELECT ... INTO TEMP); tempKept when one of them is not
	// CREATE ... ON COMMIT DROP, so that it outlives its transaction.
	createTemp, tempKept bool
	// sqlPrepare is set when a statement starts with PREPARE (not PREPARE
	// TRANSACTION) or EXECUTE: SQL-level prepared statements.
	sqlPrepare bool
	// holdCursor is set for DECLARE ... WITH HOLD, a cursor that
	// outlives its transaction.
	holdCursor bool
	// sessionLock is set when the text calls a session-level advisory lock
	// function (pg_advisory_lock, pg_try_advisory_lock and their _shared
	// forms), whose lock outlives the transaction.
	sessionLock bool
	// guardScan is set when the text may change a setting the router owns
	// in a way the first statement's SET/RESET check does not see
	// (set_config, a later SET or RESET, DO, pg_settings, EXECUTE): see
	// guard.
	guardScan bool
	// dml is set for one statement starting with SELECT, INSERT, UPDATE,
	// DELETE, WITH, VALUES, TABLE or MERGE: it can run in a transaction
	// the router opened with its own setup statement (see writeSetup).
	dml bool
	// ddl is set when a statement of the text changes the schema of the
	// shard it runs on: CREATE, ALTER or DROP of anything but a temporary
	// object or one outside the shard's schema (ddlOutside), COMMENT ON,
	// GRANT or REVOKE ... ON (not of a role). Through the router such a
	// statement changes one tenant's shard only (see Config.DDL).
	ddl bool
}

type tokKind uint8

const (
	tWord tokKind = iota + 1
	tString
	tParam
	tPunct
	tNumber
	tQuotedIdent
)

type token struct {
	kind       tokKind
	start, end int
}

const maxToks = 12

// lexer state over one statement text.
type lexer struct {
	s    string
	toks [maxToks]token
	n    int
	// multiSeen is set once a token follows the first statement.
	multiSeen bool
	// sinceSemi counts the tokens since the last ';'.
	sinceSemi int
	// ends is set while in a statement that ends a transaction (see
	// stmtInfo.endsTxn); anyEnds once one was seen, more when another
	// statement follows one.
	ends, anyEnds, more bool
	// resetAll is set while in a RESET ALL statement; resetMore when
	// another statement follows one.
	resetAll, resetMore bool
	// first is the current statement's first word when the words after it
	// decide whether it ends a transaction; prev is the last word seen.
	first, prev string
	// atomic counts open BEGIN ATOMIC bodies, whose END is no COMMIT.
	atomic int
	// prev2 is the word before prev.
	prev2 string
	// stmt is the current statement's first word (lowercase) when it is
	// one the temp/cursor checks care about; createPrefix while only
	// CREATE [OR REPLACE] [GLOBAL|LOCAL] was seen.
	stmt         string
	createPrefix bool
	// curTemp and curDrop: the current statement creates a temporary
	// object, with ON COMMIT DROP.
	curTemp, curDrop bool
	// explainRuns: the current statement is EXPLAIN with ANALYZE.
	explainRuns bool
	// curDDL: the current statement changes the shard's schema (see
	// stmtInfo.ddl), unless it is temporary.
	curDDL bool
	// with is what a WITH statement's INTO needs (see withPunct).
	with withScan
	// prepares counts statements starting with PREPARE, less those that
	// are PREPARE TRANSACTION.
	prepares int
}

// classify scans sql once, without allocating except for a hint or value
// string, and returns what routing needs to know.
func classify(sql string) stmtInfo {
	var lx lexer
	lx.s = sql
	var info stmtInfo
	stmtDone := false // first statement ended by ';'
	sawFrom := false
	i := 0
	n := len(sql)
	for i < n {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			// (\v: whitespace to PostgreSQL 16 and later, so SET\vrole is
			// SET role there; a syntax error before.)
			i++
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' && sql[i] != '\r' { // a -- comment ends at either, as in PostgreSQL
				i++
			}
		case c == '/' && i+1 < n && sql[i+1] == '*':
			start := i + 2
			i = skipBlockComment(sql, i)
			end := i - 2
			if end < start {
				end = start
			}
			if h, ok := tenantHint(sql[start:end]); ok {
				switch {
				case !info.hasHint:
					info.hint, info.hasHint = h, true
				case h != info.hint && info.hint2 == "":
					info.hint2 = h
				}
			}
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < n && sql[i+1] == '\''):
			start := i
			i = skipString(sql, i)
			lx.add(stmtDone, tString, start, i)
		case c == '"':
			start := i
			i = skipQuotedIdent(sql, i)
			lx.add(stmtDone, tQuotedIdent, start, i)
			lx.noteQuoted(sql[start:i], &info)
			if start >= 2 && sql[start-1] == '&' && (sql[start-2] == 'u' || sql[start-2] == 'U') && unicodeIdentCouldBe(sql[start:i], isSessionLockFunc) {
				info.sessionLock = true // U&"\0070g_advisory_lock"
			}
		case c == '$':
			start := i
			var k tokKind
			if i, k = scanDollar(sql, i); k != 0 {
				lx.add(stmtDone, k, start, i)
				continue
			}
		case isIdentStart(c):
			start := i
			for i < n && (isIdent(sql[i]) || sql[i] == '.') {
				i++
			}
			w := sql[start:i]
			if !stmtDone && !sawFrom {
				if eqFold(w, "from") || eqFold(w, "into") {
					sawFrom = true
				}
			}
			if stmtDone && lx.sinceSemi > 0 && lx.sinceSemi <= 2 && eqFold(w, tenantSetting) && lx.laterTenantPos() {
				info.laterTenant = true // SET/RESET/SHOW [LOCAL|SESSION] pgtenant.tenant
			}
			if stmtDone && lx.sinceSemi == 0 {
				switch {
				case eqFold(w, "set"), eqFold(w, "reset"):
					info.laterSet = true
				case eqFold(w, "discard"), eqFold(w, "deallocate"):
					info.laterDiscard = true
				case eqFold(w, "listen"):
					info.laterListen = true
				case eqFold(w, "savepoint"), eqFold(w, "release"):
					info.laterSavepoint = true
				}
			}
			if k := len(w) - 10; k >= 0 && strings.EqualFold(w[k:], "set_config") && (k == 0 || w[k-1] == '.') {
				info.callsSetConfig = true
				info.guardScan = true
			}
			if k := len(w) - 11; k >= 0 && strings.EqualFold(w[k:], "pg_settings") && (k == 0 || w[k-1] == '.') {
				info.guardScan = true
			}
			if len(w) >= 16 && isSessionLockFunc(w) {
				info.sessionLock = true
			}
			if eqFold(w, "execute") || (stmtDone && lx.sinceSemi == 0 && (eqFold(w, "set") || eqFold(w, "reset"))) {
				info.guardScan = true
			}
			lx.add(stmtDone, tWord, start, i)
			lx.noteWord(w, &info)
		case c >= '0' && c <= '9':
			start := i
			for i < n && (isIdent(sql[i]) || sql[i] == '.') {
				i++
			}
			lx.add(stmtDone, tNumber, start, i)
		case c == ';':
			i++
			lx.sinceSemi = 0
			if lx.n > 0 && !stmtDone {
				stmtDone = true
				info.firstEnd = i
			}
		default:
			if stmtDone {
				info.multi = true
			}
			lx.add(stmtDone, tPunct, i, i+1)
			if lx.stmt == "with" {
				lx.with.punct(c, lx.sinceSemi)
			}
			i++
		}
		if stmtDone && lx.multiSeen {
			info.multi = true
		}
	}
	lx.endStmt(&info)
	lx.analyze(&info, sawFrom)
	if info.ddl {
		info.ddl = shardSchemaChange(sql) // (rare: not on the hot path)
	}
	info.endsTxn = lx.anyEnds || lx.ends
	info.txnThenMore = lx.more
	info.resetThenMore = lx.resetMore
	info.sqlPrepare = info.sqlPrepare || lx.prepares > 0
	switch info.kind {
	case kSet, kReset:
		info.guardScan = true // odd spellings of reserved names (see guard)
	}
	return info
}

// endStmt notes what the statement just ended leaves behind.
func (lx *lexer) endStmt(info *stmtInfo) {
	if lx.curTemp {
		info.createTemp = true
		info.tempKept = info.tempKept || !lx.curDrop
	}
	if lx.curDDL && !lx.curTemp {
		info.ddl = true
	}
	lx.stmt, lx.createPrefix, lx.curTemp, lx.curDrop, lx.curDDL, lx.explainRuns = "", false, false, false, false, false
	lx.with = withScan{}
}

// noteQuoted notes a quoted identifier: set_config, pg_settings or a
// pg_temp schema written in quotes.
func (lx *lexer) noteQuoted(q string, info *stmtInfo) {
	name := q[1:max(1, len(q)-1)] // no allocation: ORMs quote every name
	switch {
	case eqFold(name, "set_config"):
		info.callsSetConfig = true
		info.guardScan = true
	case eqFold(name, "pg_settings"):
		info.guardScan = true
	case isSessionLockFunc(name):
		info.sessionLock = true
	case hasPrefixFold(name, "pg_temp") && (lx.stmt == "create" || lx.selectInto()):
		lx.curTemp = true
	case lx.selectInto():
		lx.curDDL = true // SELECT ... INTO "name"
	}
}

// selectInto reports whether the name after the last word is the table a
// SELECT ... INTO creates: it follows INTO in a SELECT, or in a WITH
// statement where that INTO is not INSERT INTO or MERGE INTO.
func (lx *lexer) selectInto() bool {
	if !eqFold(lx.prev, "into") {
		return false
	}
	return lx.stmt == "select" || (lx.stmt == "with" && lx.with.cmdAt != lx.sinceSemi-2)
}

// noteWord notes a word token just added: whether the statement it is in ends
// a transaction, and BEGIN ATOMIC bodies.
func (lx *lexer) noteWord(w string, info *stmtInfo) {
	eq := eqFold
	lx.noteObjects(w, info)
	switch n := lx.sinceSemi; {
	case n == 1:
		lx.first = ""
		switch {
		case eq(w, "execute"):
			info.sqlPrepare = true
		case eq(w, "commit"), eq(w, "rollback"), eq(w, "abort"):
			lx.ends, lx.first = true, "commit"
			if eq(w, "rollback") {
				lx.first = "rollback"
			}
		case eq(w, "end"):
			if lx.atomic > 0 {
				lx.atomic--
			} else {
				lx.ends = true
			}
		case eq(w, "prepare"):
			lx.first = "prepare"
			lx.prepares++
			info.guardScan = true // statement names (see guard)
		case eq(w, "deallocate"):
			info.guardScan = true
		case eq(w, "call"):
			info.callsProc = true
		case eq(w, "do"):
			info.callsProc = true
			info.guardScan = true
		}
	case n == 2 && eq(w, "all") && eq(lx.prev, "reset"):
		lx.resetAll = true
	case n <= 3 && lx.first != "":
		switch {
		case lx.first == "prepare":
			lx.ends = n == 2 && eq(w, "transaction")
			if lx.ends {
				lx.prepares--
			}
			lx.first = ""
		case eq(w, "work"), eq(w, "transaction"):
		case eq(w, "to") && lx.first == "rollback":
			lx.ends, lx.first = false, ""
			info.rollbackTo = true
		case eq(w, "prepared"):
			lx.ends, lx.first = false, ""
		default:
			lx.first = ""
		}
	}
	switch {
	case eq(w, "atomic") && eq(lx.prev, "begin"):
		lx.atomic++
	case eq(w, "end") && eq(lx.prev, "atomic") && lx.sinceSemi > 1 && lx.atomic > 0:
		lx.atomic-- // an empty body
	}
	lx.prev2, lx.prev = lx.prev, w
}

// noteObjects follows, word by word, what a statement creates that may
// outlive its transaction: temporary objects (and whether they are ON
// COMMIT DROP) and cursors WITH HOLD.
func (lx *lexer) noteObjects(w string, info *stmtInfo) {
	eq := eqFold
	if lx.sinceSemi == 1 {
		lx.endStmt(info)
		switch {
		case eq(w, "create"):
			lx.stmt, lx.createPrefix, lx.curDDL = "create", true, true
		case eq(w, "alter"), eq(w, "drop"):
			lx.stmt, lx.curDDL = "alter", true
		case ddlStatementWord(w):
			lx.curDDL = true // COMMENT ON, SECURITY LABEL, IMPORT FOREIGN SCHEMA
		case eq(w, "grant"), eq(w, "revoke"):
			lx.stmt = "grant"
		case eq(w, "select"):
			lx.stmt = "select"
		case eq(w, "with"):
			lx.stmt = "with"
		case eq(w, "explain"):
			lx.stmt = "explain"
		case eq(w, "declare"):
			lx.stmt = "declare"
		}
		return
	}
	switch lx.stmt {
	case "create":
		if lx.createPrefix {
			switch {
			case eq(w, "or"), eq(w, "replace"), eq(w, "global"), eq(w, "local"):
				return
			case eq(w, "temp"), eq(w, "temporary"):
				lx.curTemp = true
			case ddlOutside(w):
				lx.curDDL = false
			}
			lx.createPrefix = false
		}
		if hasPrefixFold(w, "pg_temp") {
			lx.curTemp = true
		}
		if eq(w, "drop") && eq(lx.prev, "commit") && eq(lx.prev2, "on") {
			lx.curDrop = true
		}
	case "alter":
		if (lx.sinceSemi == 2 && ddlOutside(w)) || hasPrefixFold(w, "pg_temp") {
			lx.curDDL = false // DROP TABLE pg_temp.t too
		}
	case "grant":
		if eq(w, "on") {
			lx.curDDL = true // privileges on objects, not a role's membership
		}
	case "select", "with":
		if lx.stmt == "with" {
			lx.with.word(w, lx.sinceSemi, lx.prev2)
		}
		switch into := lx.selectInto(); {
		case into && (eq(w, "temp") || eq(w, "temporary") || hasPrefixFold(w, "pg_temp")):
			lx.curTemp = true
		case eq(lx.prev, "table") && (lx.stmt == "select" || eq(lx.prev2, "into")) && hasPrefixFold(w, "pg_temp"):
			lx.curTemp = true // SELECT ... INTO TABLE pg_temp.x
		case into:
			lx.curDDL = true // SELECT ... INTO [UNLOGGED] [TABLE] name creates a table
		}
	case "explain":
		switch {
		case eq(w, "analyze") || eq(w, "analyse"):
			lx.explainRuns = true
		case !lx.explainRuns:
		case eq(w, "create"):
			// EXPLAIN ANALYZE CREATE TABLE ... AS creates the table.
			lx.stmt, lx.createPrefix, lx.curDDL = "create", true, true
		case eq(w, "select"):
			lx.stmt = "select" // EXPLAIN ANALYZE SELECT ... INTO creates the table too
		case eq(w, "with"):
			lx.stmt = "with"
		case eq(w, "insert"), eq(w, "update"), eq(w, "delete"), eq(w, "merge"):
			lx.stmt = "" // (its SELECT is no SELECT ... INTO)
		}
	case "declare":
		if eq(w, "hold") && eq(lx.prev, "with") {
			info.holdCursor = true
		}
	}
}

// ddlOutside reports whether the word after CREATE, ALTER or DROP names
// something that does not live in the shard's schema: roles, databases,
// tablespaces, schemas, server settings and the like, the same on every
// shard of a node or cluster-wide.
func ddlOutside(w string) bool {
	switch len(w) {
	case 4:
		return eqFold(w, "role") || eqFold(w, "user")
	case 5:
		return eqFold(w, "group") || eqFold(w, "owned") || eqFold(w, "event")
	case 6:
		return eqFold(w, "schema") || eqFold(w, "system") || eqFold(w, "server")
	case 7:
		return eqFold(w, "default")
	case 8:
		return eqFold(w, "database") || eqFold(w, "language")
	case 10:
		return eqFold(w, "tablespace")
	case 11:
		return eqFold(w, "publication")
	case 12:
		return eqFold(w, "subscription")
	}
	return false
}

// unicodeIdentCouldBe reports whether a quoted identifier written U&"..."
// (q with its quotes) decodes to a name f accepts, with its escapes read
// with any escape character it may use (a UESCAPE clause after it picks
// one; backslash without).
func unicodeIdentCouldBe(q string, f func(string) bool) bool {
	body := strings.ReplaceAll(q[1:max(1, len(q)-1)], `""`, `"`)
	for i := 0; i < len(body); i++ {
		e := body[i]
		if isIdent(e) || e == '+' || e == '\'' || e == '"' || e <= ' ' || e >= 0x80 || strings.IndexByte(body[:i], e) >= 0 {
			continue // not an escape character UESCAPE accepts, or tried
		}
		if name, ok := decodeUnicodeEscapes(body, e); ok && f(name) {
			return true
		}
	}
	return false
}

// decodeUnicodeEscapes decodes U&"..." escapes (eXXXX, e+XXXXXX, ee) in s
// with escape character e.
func decodeUnicodeEscapes(s string, e byte) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != e {
			b.WriteByte(s[i])
			continue
		}
		n := 4
		switch {
		case i+1 < len(s) && s[i+1] == e:
			b.WriteByte(e)
			i++
			continue
		case i+1 < len(s) && s[i+1] == '+':
			n, i = 6, i+1
		}
		if i+n >= len(s) {
			return "", false
		}
		r, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32)
		if err != nil {
			return "", false
		}
		b.WriteRune(rune(r))
		i += n
	}
	return b.String(), true
}

// isSessionLockFunc reports whether a word (possibly qualified) names a
// session-level advisory lock function.
func isSessionLockFunc(w string) bool {
	if k := strings.LastIndexByte(w, '.'); k >= 0 {
		w = w[k+1:]
	}
	return eqFold(w, "pg_advisory_lock") || eqFold(w, "pg_advisory_lock_shared") ||
		eqFold(w, "pg_try_advisory_lock") || eqFold(w, "pg_try_advisory_lock_shared")
}

// eqFold is strings.EqualFold for ASCII keywords, as PostgreSQL compares
// them (only A-Z fold; a multibyte character never matches, where
// strings.EqualFold folds "ſ" to "s" and the Kelvin sign to "k"):
// different lengths differ at once, and the loop is inlined (the lexer's
// hot path compares every word to several).
func eqFold(s, t string) bool {
	return len(s) == len(t) && sameFold(s, t)
}

// sameFold is eqFold for s and t of the same length. (Not inlined, so
// that eqFold's length test is.)
//
//go:noinline
func sameFold(s, t string) bool {
	for i := 0; i < len(s); i++ {
		if a, b := s[i], t[i]; a != b && lowerASCII(a) != lowerASCII(b) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

// laterTenantPos reports whether a word in a later statement, at position
// lx.sinceSemi (1 or 2), is where SET/RESET/SHOW [LOCAL|SESSION] name the
// setting.
func (lx *lexer) laterTenantPos() bool {
	eq := eqFold
	if lx.sinceSemi == 1 {
		return eq(lx.prev, "set") || eq(lx.prev, "reset") || eq(lx.prev, "show")
	}
	return eq(lx.prev, "local") || eq(lx.prev, "session")
}

func (lx *lexer) add(after bool, k tokKind, start, end int) {
	if lx.sinceSemi == 0 {
		// A statement starts; the one before is complete.
		if lx.ends {
			lx.anyEnds = true
			lx.more = lx.more || after
		}
		lx.resetMore = lx.resetMore || (lx.resetAll && after)
		lx.ends, lx.resetAll = false, false
	}
	lx.sinceSemi++
	if after {
		lx.multiSeen = true
		return
	}
	if lx.n < maxToks {
		lx.toks[lx.n] = token{k, start, end}
		lx.n++
	}
}

func isIdentStart(c byte) bool { return identBytes[c]&identStart != 0 }

func isIdent(c byte) bool { return identBytes[c] != 0 }

// identBytes classes each byte for isIdentStart (a letter, '_', or any
// byte of a multibyte character) and isIdent (those, digits and '$'): one
// load per byte of every word the lexer scans.
var identBytes = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80:
			t[c] = identStart | identPart
		case (c >= '0' && c <= '9') || c == '$':
			t[c] = identPart
		}
	}
	return t
}()

const (
	identStart = 1 << iota
	identPart
)

// tenantHint reads "tenant: x" or "tenant=x" from a comment body.
func tenantHint(body string) (string, bool) {
	b := strings.TrimSpace(body)
	if len(b) < 7 || !sameFold(b[:6], "tenant") {
		return "", false
	}
	b = b[6:]
	for b != "" && (b[0] == ' ' || b[0] == '\t') { // strings.TrimLeft builds its byte set each call
		b = b[1:]
	}
	if b == "" || (b[0] != ':' && b[0] != '=') {
		return "", false
	}
	v := strings.TrimSpace(b[1:])
	if len(v) >= 2 && (v[0] == '\'' || v[0] == '"') && v[len(v)-1] == v[0] {
		q := v[:1]
		v = strings.ReplaceAll(v[1:len(v)-1], q+q, q)
	}
	if v == "" {
		return "", false
	}
	return v, true
}

// localSetConfig sets info.localSetConfig for SELECT [pg_catalog.]set_config(
// 'x', v, true) with x neither search_path nor pgtenant.*, v a literal or a
// parameter, and nothing else in the text.
func (lx *lexer) localSetConfig(info *stmtInfo) {
	if info.multi || lx.n != 9 || !(lx.word(1, "set_config") || lx.word(1, "pg_catalog.set_config")) || !lx.punct(2, '(') ||
		lx.toks[3].kind != tString || !lx.punct(4, ',') || (lx.toks[5].kind != tString && lx.toks[5].kind != tParam) ||
		!lx.punct(6, ',') || lx.toks[7].kind == tParam || !lx.punct(8, ')') || lx.escapedName(3) {
		return
	}
	name := strings.ToLower(strings.TrimSpace(unquoteString(lx.text(3))))
	if name == "search_path" || strings.HasPrefix(name, "pgtenant.") || name == "role" || name == "session_authorization" {
		return
	}
	v, _ := lx.value(7)
	info.localSetConfig = strings.EqualFold(v, "true") || strings.EqualFold(v, "t") || strings.EqualFold(v, "on") || v == "1"
}

// pathSetConfig sets info.pathSetConfig, val or param, and isLocal for
// SELECT [pg_catalog.]set_config('search_path', v, b) with v a literal or
// a parameter, b a literal, and nothing else in the text.
func (lx *lexer) pathSetConfig(info *stmtInfo) {
	if info.multi || lx.n != 9 || !(lx.word(1, "set_config") || lx.word(1, "pg_catalog.set_config")) || !lx.punct(2, '(') ||
		lx.toks[3].kind != tString || !lx.punct(4, ',') || (lx.toks[5].kind != tString && lx.toks[5].kind != tParam) ||
		!lx.punct(6, ',') || lx.toks[7].kind == tParam || !lx.punct(8, ')') || lx.escapedName(3) ||
		strings.ToLower(unquoteString(lx.text(3))) != "search_path" {
		return
	}
	info.pathSetConfig = true
	if lx.toks[5].kind == tParam {
		p := 0
		for _, d := range lx.text(5)[1:] {
			p = p*10 + int(d-'0')
		}
		info.param = p
	} else {
		info.val = unquoteString(lx.text(5))
	}
	v, _ := lx.value(7)
	info.isLocal = strings.EqualFold(v, "true") || strings.EqualFold(v, "t") || strings.EqualFold(v, "on") || v == "1"
}

// paramSetConfig sets info.paramSetConfig and param for SELECT
// [pg_catalog.]set_config('x', $N, b) with b a literal that is not true, x
// neither search_path, pgtenant.* nor another setting the router owns, and
// nothing else in the text.
func (lx *lexer) paramSetConfig(info *stmtInfo) {
	if info.multi || lx.n != 9 || !(lx.word(1, "set_config") || lx.word(1, "pg_catalog.set_config")) || !lx.punct(2, '(') ||
		lx.toks[3].kind != tString || !lx.punct(4, ',') || lx.toks[5].kind != tParam ||
		!lx.punct(6, ',') || lx.toks[7].kind == tParam || !lx.punct(8, ')') || lx.escapedName(3) {
		return
	}
	name := strings.ToLower(strings.TrimSpace(unquoteString(lx.text(3))))
	if name == "" || isReserved(name) || strings.HasPrefix(name, "pgtenant.") {
		return
	}
	if v, ok := lx.value(7); !ok || !falseLiteral(v) {
		return
	}
	p := 0
	for _, d := range lx.text(5)[1:] {
		p = p*10 + int(d-'0')
	}
	info.paramSetConfig, info.param = true, p
}

// escapedName reports whether token i is an E'...' string: a setting name
// spelled with escapes is no plain set_config (see session.pathStmt).
func (lx *lexer) escapedName(i int) bool {
	c := lx.s[lx.toks[i].start]
	return c == 'E' || c == 'e'
}

func (lx *lexer) text(i int) string {
	if i >= lx.n {
		return ""
	}
	return lx.s[lx.toks[i].start:lx.toks[i].end]
}

func (lx *lexer) word(i int, w string) bool {
	return i < lx.n && lx.toks[i].kind == tWord && eqFold(lx.text(i), w)
}

func (lx *lexer) punct(i int, p byte) bool {
	return i < lx.n && lx.toks[i].kind == tPunct && lx.s[lx.toks[i].start] == p
}

// value returns token i as a setting value: strings unquoted, words and
// numbers as written.
func (lx *lexer) value(i int) (string, bool) {
	if i >= lx.n {
		return "", false
	}
	t := lx.toks[i]
	s := lx.s[t.start:t.end]
	switch t.kind {
	case tString:
		return unquoteString(s), true
	case tWord, tNumber:
		return s, true
	case tQuotedIdent:
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`), true
	}
	return "", false
}

// unquoteString decodes a '...' or E'...' literal ($$ strings are returned
// without their tags).
func unquoteString(s string) string {
	if s[0] == '$' {
		j := strings.IndexByte(s[1:], '$')
		tag := s[:j+2]
		return strings.TrimSuffix(s[len(tag):], tag)
	}
	if s[0] == 'E' || s[0] == 'e' {
		// Every escape the server decodes (\x41, \101, \u0041 too): the
		// value is the one the server would see.
		return unescapeString(s[1:])
	}
	if len(s) >= 2 {
		s = s[1 : len(s)-1]
	}
	return strings.ReplaceAll(s, "''", "'")
}

const tenantSetting = "pgtenant.tenant"

func (lx *lexer) analyze(info *stmtInfo, sawFrom bool) {
	if lx.n == 0 {
		return
	}
	w := lx.text(0)
	if !info.multi {
		for _, k := range [...]string{"select", "insert", "update", "delete", "with", "values", "table", "merge"} {
			if eqFold(w, k) {
				info.dml = true
				break
			}
		}
	}
	switch {
	case eqFold(w, "select"):
		info.kind = kSelect
		info.noShard = !sawFrom && !info.multi
		lx.localSetConfig(info)
		lx.pathSetConfig(info)
		// SELECT [pg_catalog.]set_config('pgtenant.tenant', v, local)
		if (lx.word(1, "set_config") || lx.word(1, "pg_catalog.set_config")) && lx.punct(2, '(') &&
			lx.n > 3 && lx.toks[3].kind == tString && strings.EqualFold(unquoteString(lx.text(3)), tenantSetting) && lx.punct(4, ',') {
			switch {
			case lx.n > 5 && lx.toks[5].kind == tParam:
				info.op = opSetConfig
				p := 0
				for _, d := range lx.text(5)[1:] {
					p = p*10 + int(d-'0')
				}
				info.param = p
			case lx.n > 5 && lx.toks[5].kind == tString:
				info.op = opSetConfig
				info.val = unquoteString(lx.text(5))
			}
			if info.op == opSetConfig && lx.punct(6, ',') {
				v, _ := lx.value(7)
				info.isLocal = strings.EqualFold(v, "true") || strings.EqualFold(v, "t") || strings.EqualFold(v, "on") || v == "1"
				lit := lx.n > 7 && lx.toks[7].kind != tParam
				info.plainSetConfig = lit && lx.punct(8, ')') && lx.n == 9 && !info.multi
			}
		}
		if info.op == opNone && !info.localSetConfig && !info.pathSetConfig {
			lx.paramSetConfig(info)
		}
	case eqFold(w, "values"):
		info.kind = kValues
		info.noShard = !info.multi
	case eqFold(w, "begin"), eqFold(w, "start"):
		info.kind = kBegin
	case eqFold(w, "commit"), eqFold(w, "end"):
		info.kind = kCommit
		if lx.word(1, "prepared") {
			info.kind = kOther // COMMIT PREPARED runs outside a transaction
		}
	case eqFold(w, "rollback"), eqFold(w, "abort"):
		info.kind = kRollback
		if lx.word(1, "prepared") || info.rollbackTo {
			info.kind = kOther
		}
	case eqFold(w, "savepoint"), eqFold(w, "release"):
		info.kind = kSavepoint
	case eqFold(w, "set"):
		info.kind = kSet
		info.noShard = !info.multi
		i := 1
		if lx.word(i, "session") && !lx.word(i+1, "characteristics") && !lx.word(i+1, "authorization") {
			i++
		} else if lx.word(i, "local") {
			info.isLocal = true
			i++
		}
		info.setName = strings.ToLower(lx.text(i))
		if lx.n > i && lx.toks[i].kind == tQuotedIdent {
			info.setName, _ = lx.value(i)
		}
		info.setDefault = (lx.punct(i+1, '=') || lx.word(i+1, "to")) && lx.word(i+2, "default") && lx.n == i+3
		if info.setName == tenantSetting {
			info.op = opSet
			if info.isLocal {
				info.op = opSetLocal
			}
			if lx.punct(i+1, '=') || lx.word(i+1, "to") {
				info.val, _ = lx.value(i + 2)
				if lx.word(i+2, "default") {
					info.op, info.val = opReset, ""
				}
			}
		}
		info.reservedSet = isReserved(info.setName)
	case eqFold(w, "reset"):
		info.kind = kReset
		info.noShard = !info.multi
		info.setName = strings.ToLower(lx.text(1))
		if info.setName == tenantSetting {
			info.op = opReset
		}
		info.reservedSet = isReserved(info.setName)
	case eqFold(w, "show"):
		info.kind = kShow
		info.noShard = !info.multi
		info.setName = strings.ToLower(lx.text(1))
		if info.setName == tenantSetting {
			info.op = opShow
		}
	case eqFold(w, "listen"):
		info.kind = kListen
	case eqFold(w, "unlisten"):
		info.kind = kUnlisten
		if lx.n == 2 && lx.punct(1, '*') && !info.multi {
			info.setName = "*" // UNLISTEN * alone
		}
	case eqFold(w, "discard"):
		info.kind = kDiscard
		if lx.n == 2 && lx.word(1, "all") && !info.multi {
			info.setName = "all" // DISCARD ALL alone
		}
	case eqFold(w, "prepare"):
		info.kind = kPrepare
		if lx.word(1, "transaction") {
			info.kind = kOther
		}
	case eqFold(w, "deallocate"):
		info.kind = kDeallocate
		i := 1
		if lx.word(i, "prepare") {
			i++
		}
		switch {
		case lx.n <= i:
		case lx.toks[i].kind == tQuotedIdent:
			info.setName, _ = lx.value(i)
		case lx.toks[i].kind == tWord:
			info.setName = strings.ToLower(lx.text(i)) // "all" for ALL
		}
	case eqFold(w, "copy"):
		info.kind = kCopy
	}
}

// isReserved reports settings the router manages itself.
func isReserved(name string) bool {
	switch name {
	case "search_path", "role", "session", "session_authorization", "pgtenant.tenant_id":
		return true
	}
	return strings.HasPrefix(name, "pgtenant.") && name != tenantSetting
}
