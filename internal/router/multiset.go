package router

import (
	"encoding/binary"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// A session SET among several statements of one query string ("SET
// datestyle = 'ISO, DMY'; SELECT 1", "SELECT 1; RESET x") is recorded as
// one sent alone is (see setDone), once the server has run it: the
// server answers each statement of the string with one CommandComplete
// (empty statements with nothing), in order, and stops at the first
// error. stringSets finds the string's statements that set or reset a
// session setting and the number of CommandCompletes before each; the
// string's expect counts them (multiDone). Whether the setting lasts is
// the transaction's business as for a lone SET: an error or ROLLBACK
// drops it (endTxnSets), a COMMIT or the idle ReadyForQuery keeps it.
// Only strings the lexer saw a SET, RESET, set_config, SAVEPOINT, RELEASE
// or ROLLBACK TO in come here: a savepoint made in a string of no SET is a
// mark all the same, so that a later ROLLBACK TO drops only the SETs after
// it (savepoint.go).

// stringSet is one session setting of a query string: set (or reset)
// once the server has completed the statement after `at` others.
type stringSet struct {
	at int
	st setting
}

// stringSets are the session settings of one query string, and how many
// of its statements the server has completed so far.
type stringSets struct {
	done int
	sets []stringSet
}

// stringSetsOf returns the session settings the statements of sql set or
// reset (nil when none): SET [SESSION] and RESET of a setting the router
// does not own, and SELECT set_config('x', v, false) alone in its
// statement (sessionSetConfig). SET LOCAL and SET TRANSACTION end with the
// transaction; the router's own settings and pgtenant.tenant are refused
// or answered before (refuse, guard, laterTenant).
func stringSetsOf(sql string) *stringSets {
	var ss stringSets
	at := 0
	splitStatements(sql, func(stmt, first string, setConfig bool) {
		if eqFold(first, "savepoint") || eqFold(first, "release") || eqFold(first, "rollback") || eqFold(first, "abort") {
			if sp := savepointOf(stmt); sp != nil {
				ss.sets = append(ss.sets, stringSet{at: at, st: *sp})
			}
			at++
			return
		}
		if !eqFold(first, "set") && !eqFold(first, "reset") && !(setConfig && eqFold(first, "select")) {
			at++ // (no setting of the session: not classified)
			return
		}
		info := classify(stmt)
		switch {
		case info.op != opNone || info.reservedSet:
		case info.kind == kSet && !info.isLocal && info.setName != "transaction" && !info.setDefault:
			ss.sets = append(ss.sets, stringSet{at: at, st: setting{name: info.setName, stmt: stmt}})
		case info.kind == kSet && !info.isLocal && info.setDefault:
			ss.sets = append(ss.sets, stringSet{at: at, st: setting{name: info.setName, reset: true}})
		case info.kind == kReset:
			ss.sets = append(ss.sets, stringSet{at: at, st: setting{name: info.setName, reset: true}})
		case info.kind == kSelect && info.callsSetConfig && !info.localSetConfig: // (the row-level-security idiom is local)
			if name, ok := sessionSetConfig(stmt); ok {
				ss.sets = append(ss.sets, stringSet{at: at, st: setting{name: name, stmt: stmt}})
			}
		}
		at++
	})
	if len(ss.sets) == 0 {
		return nil
	}
	return &ss
}

// multiDone counts one CommandComplete of the query string e is for: a
// setting of the statement just completed waits in txnSets (setDone). It
// reports whether that statement was a savepoint's (savepoint.go).
func (ss *session) multiDone(e *expect) (sp bool) {
	m := e.msets
	for len(m.sets) > 0 && m.sets[0].at == m.done {
		sp = sp || m.sets[0].st.sp != spNone
		ss.setDone(&m.sets[0].st)
		m.sets = m.sets[1:]
	}
	m.done++
	return sp
}

// splitStatements calls f with each statement of sql that is not empty
// (comments and whitespace only), without its ';', as the server splits
// the string: not at a ';' inside a string, quoted identifier, comment,
// dollar quote, or the body of BEGIN ATOMIC ... END. first is the
// statement's first word ("" when it starts otherwise), setConfig whether
// it names set_config.
func splitStatements(sql string, f func(stmt, first string, setConfig bool)) {
	n := len(sql)
	start, toks, atomic := 0, 0, 0 // toks: since the last ';'
	var prev, first string
	setConfig := false
	any := false // a token since the statement's start
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && i+1 < n && sql[i+1] == '-':
			for i < n && sql[i] != '\n' && sql[i] != '\r' {
				i++
			}
			continue
		case c == '/' && i+1 < n && sql[i+1] == '*':
			i = skipBlockComment(sql, i)
			continue
		case c == ';':
			i++
			toks = 0
			if atomic == 0 {
				if any {
					f(sql[start:i-1], first, setConfig)
				}
				start, any, first, setConfig = i, false, "", false
			}
			continue
		case c == '\'' || ((c == 'E' || c == 'e') && i+1 < n && sql[i+1] == '\''):
			i = skipString(sql, i)
			prev = ""
		case c == '"':
			j := i
			i = skipQuotedIdent(sql, i)
			setConfig = setConfig || eqFold(sql[j:i], `"set_config"`)
			prev = ""
		case c == '$':
			if j, k := scanDollar(sql, i); k != 0 {
				i = j
			} else {
				i++
			}
			prev = ""
		case isIdentStart(c):
			j := i
			for i < n && (isIdent(sql[i]) || sql[i] == '.') {
				i++
			}
			w := sql[j:i]
			if !any {
				first = w
			}
			if k := len(w) - 10; k >= 0 && eqFold(w[k:], "set_config") && (k == 0 || w[k-1] == '.') {
				setConfig = true
			}
			switch {
			case eqFold(w, "atomic") && eqFold(prev, "begin"):
				atomic++
			case eqFold(w, "end") && atomic > 0 && (toks == 0 || eqFold(prev, "atomic")):
				atomic-- // (END right after ATOMIC: an empty body)
			}
			prev = w
		default:
			i++
			prev = ""
		}
		toks++
		any = true
	}
	if any {
		f(sql[start:], first, setConfig)
	}
}

// sessionSetConfig reports whether stmt is exactly SELECT
// [pg_catalog.]set_config('x', 'v', false) (false, 'f', off, 0 ...: a
// literal that is not true) of a setting x the router does not own, and
// returns x in lowercase: the statement sets x for the session as SET x
// does, and is replayed as it is.
func sessionSetConfig(stmt string) (string, bool) {
	toks := gtoks(stmt)
	if len(toks) != 9 || !eqFold(toks[0].text, "select") || !(eqFold(toks[1].text, "set_config") || eqFold(toks[1].text, "pg_catalog.set_config")) ||
		toks[2].text != "(" || toks[3].kind != tString || toks[4].text != "," || toks[5].kind != tString ||
		toks[6].text != "," || toks[8].text != ")" || toks[3].text[0] != '\'' {
		return "", false
	}
	name := strings.ToLower(strings.TrimSpace(unquoteString(toks[3].text)))
	if name == "" || isReserved(name) || strings.HasPrefix(name, "pgtenant.") {
		return "", false
	}
	var v string
	switch toks[7].kind {
	case tString:
		v = unquoteString(toks[7].text)
	case tWord, tNumber:
		v = toks[7].text
	default:
		return "", false
	}
	if falseLiteral(v) {
		return name, true
	}
	return "", false
}

// falseLiteral reports whether v, a literal, is a boolean false as the
// server reads one (false, 'f', off, 0, no ... in any case).
func falseLiteral(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "false", "f", "fa", "fal", "fals", "off", "of", "0", "no", "n":
		return true
	}
	return false
}

// bindSetConfig returns the session setting a Bind (its message after the
// names, rest) of def, SELECT set_config('x', $N, false)
// (stmtInfo.paramSetConfig), makes once it runs: replayed as set_config
// with the bound value as a literal. It is nil when the value is null or
// comes in binary format of a type other than text or varchar (whose
// binary form is the text): the server checks the value either way, the
// router keeps only what it can read.
func bindSetConfig(def *stmtDef, rest []byte) *setting {
	i := def.info.param - 1
	p, text, ok := wire.BindParam(rest, i)
	if !ok {
		return nil
	}
	toks := gtoks(def.orig)
	if len(toks) != 9 {
		return nil
	}
	name := strings.ToLower(strings.TrimSpace(unquoteString(toks[3].text)))
	if p == nil {
		// set_config with a null value resets the setting (review16).
		return &setting{name: name, reset: true}
	}
	cast, known := textParam(def.types, i)
	if !known || (!text && cast == "::pg_catalog.\"char\"") {
		return nil
	}
	return &setting{name: name, stmt: "SELECT pg_catalog.set_config(" + quoteLiteral(name) + ", " + quoteLiteral(string(p)) + cast + ", false)"}
}

// textParam reports whether parameter i of a Parse's types (a count and
// OIDs) is a type whose value set_config takes as text: text, varchar or
// left to the server (which makes it text), or bpchar, name or "char",
// whose casts to text change it (trailing blanks, length), replayed by
// cast (review16); the binary form of each but "char" is its text.
func textParam(types []byte, i int) (cast string, ok bool) {
	if len(types) < 2 || i >= int(binary.BigEndian.Uint16(types)) || len(types) < 2+4*(i+1) {
		return "", true
	}
	switch binary.BigEndian.Uint32(types[2+4*i:]) {
	case 0, 25, 1043: // unspecified, text, varchar
		return "", true
	case 1042:
		return "::pg_catalog.bpchar", true
	case 19:
		return "::pg_catalog.name", true
	case 18:
		return "::pg_catalog.\"char\"", true
	}
	return "", false
}

// endDeferredSets ends the SETs of a block whose BEGIN the router still
// defers, at its COMMIT or ROLLBACK: statements of no tenant ran outside
// the block (sendPendingBegin), each committed on its backend, and their
// SETs waited in txnSets for the block's end (drain). Rolled back, they
// are dropped, and a backend still attached (session mode) has values the
// session no longer holds: it gets RESET ALL and the session's settings
// before its next statement.
func (ss *session) endDeferredSets(committed bool) {
	if !committed && ss.be != nil {
		dirty := false
		for i := range ss.txnSets {
			dirty = dirty || ss.txnSets[i].sp == spNone
		}
		// SETs of the block still in flight (a pipeline: BEGIN, SET,
		// ROLLBACK before a Sync) are rolled back too, though they will
		// complete on their backend (review16). A deferred BEGIN waits for
		// no statement in flight (canDefer): all queued are the block's.
		for i := range ss.queue {
			if e := &ss.queue[i]; e.msets != nil || (e.set != nil && e.set.sp == spNone) {
				e.set, e.msets, dirty = nil, nil, true
			}
		}
		if dirty {
			ss.be.Schema, ss.be.Tenant, ss.be.SessionSig = "\x00", "\x00", "\x00"
		}
	}
	ss.endTxnSets(committed)
}
