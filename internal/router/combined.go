package router

import (
	"strconv"
	"unicode/utf8"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// One Query per transaction for a simple-protocol statement.
//
// Outside a transaction block, the setup a simple Query needs (DISCARD
// TEMP after a checkout, the shard's search_path and the tenant id) cannot
// go ahead of it as an unsynced Bind/Execute (see sendQuerySetup); sent as
// a Query of its own it costs the server a transaction and a flush of its
// own, and the router a second answer to read, often with a wake-up of its
// own. For one DML statement (stmtInfo.dml, which can run in an implicit
// transaction block) in transaction pool mode, the router instead sends
// one Query whose text is its own statements followed by the client's:
//
//	DISCARD TEMP;SET LOCAL search_path = 'shard_0003', 'public', 'pg_temp';SET LOCAL pgtenant.tenant_id = '…';<client's text>
//
// The server runs the string as one implicit transaction, so the settings
// are transaction-local, as with the extended protocol's writeSetup, and
// answers with one ReadyForQuery. The router swallows the answers of its
// own statements (expect.skip) and moves the position of a syntax error
// back into the client's text (expect.posShift).

// combinedSetup reports whether the client's simple Query (info, whose
// own setting change is newSet) may carry the deferred setup in its text,
// and builds that text's prefix in ss.pre when so. It returns how many
// statements the prefix holds (0: none, send the setup the usual way).
func (ss *session) combinedSetup(info *stmtInfo, newSet *setting) int {
	if !info.dml || info.guardScan || newSet != nil || ss.srv.cfg.PoolMode != PoolTransaction ||
		ss.status != 'I' || ss.unsynced || ss.setupEach || ss.localOpen || ss.backendPending() ||
		!(ss.cleanDue || (ss.setupDue && ss.setupLocal)) {
		return 0
	}
	if ss.setupDue && !ss.clientUTF8() && !(isASCII(ss.setupPath) && isASCII(ss.setupTenant)) {
		// The server would read the prefix in another client encoding:
		// error positions could not be moved back by a character count.
		return 0
	}
	n := 0
	ss.pre = ss.pre[:0]
	if ss.cleanDue {
		ss.cleanDue = false
		ss.pre = append(ss.pre, discardTempSQL+";"...)
		n++
	}
	if ss.setupDue {
		ss.setupDue = false
		if ss.setupPath != "" {
			ss.pre = appendSetLocalPath(ss.pre, ss.srv.setPathValue(ss.setupSchema))
			n++
		}
		ss.pre = appendSetLocalTenant(ss.pre, ss.setupTenant)
		n++
		// The transaction holds local settings: its answer is read before
		// anything else is sent, and the backend goes back to the pool
		// when it ends (as after writeSetup).
		ss.localOpen = true
	}
	return n
}

// appendSetLocalPath appends "SET LOCAL search_path = <value>;". value is
// a setPathValue result: the names as string literals, which SET stores
// spelled as searchPath spells them, so SHOW search_path reads as after
// set_config('search_path', searchPath(schema), true).
//
// SET LOCAL rather than SELECT set_config: a utility statement, with
// nothing to plan and no row to send, costs the server about 20 µs less
// per transaction (bench/README.md). Inside the implicit transaction
// block of a Query of several statements it gives no warning.
func appendSetLocalPath(dst []byte, path string) []byte {
	dst = append(dst, "SET LOCAL search_path = "...)
	dst = append(dst, path...)
	return append(dst, ';')
}

// appendSetLocalTenant appends "SET LOCAL pgtenant.tenant_id = '<tenant>';"
// with the tenant id as a string literal (appendQuoteLiteral: any tenant id
// placement.ValidateTenantID accepts, quotes and backslashes too; the
// empty one of statements without a tenant). SET stores a string literal
// as it is for a setting that is not a list.
func appendSetLocalTenant(dst []byte, tenant string) []byte {
	dst = append(dst, "SET LOCAL pgtenant.tenant_id = "...)
	dst = appendQuoteLiteral(dst, tenant)
	return append(dst, ';')
}

// clientUTF8 reports whether the session's client encoding is UTF-8 (no
// client_encoding among its settings; one set to UTF8 counts as another,
// to be safe).
func (ss *session) clientUTF8() bool {
	for _, st := range ss.sets {
		if st.name == "client_encoding" {
			return false
		}
	}
	return true
}

// isASCII reports whether s holds only ASCII characters.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// appendQuoteLiteral appends s as an SQL string literal: E'…' with
// backslashes doubled when s holds one, quotes doubled.
func appendQuoteLiteral(dst []byte, s string) []byte {
	esc := false
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			esc = true
			break
		}
	}
	if esc {
		dst = append(dst, 'E')
	}
	dst = append(dst, '\'')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			dst = append(dst, '\'', '\'')
		case c == '\\' && esc:
			dst = append(dst, '\\', '\\')
		default:
			dst = append(dst, c)
		}
	}
	return append(dst, '\'')
}

// writeCombinedQuery writes the Query of prefix ss.pre and the client's
// text (body: the Query message's body, NUL-terminated) to the backend.
func (ss *session) writeCombinedQuery(body []byte) {
	w := ss.be.W
	w.WriteHeader(wire.MsgQuery, len(ss.pre)+len(body))
	w.Write(ss.pre)
	w.Write(body)
}

// shiftPosition returns an ErrorResponse or NoticeResponse body with its
// statement position (field P, in characters from 1) moved back by shift
// characters, out of the router's prefix into the client's text; a
// position inside the prefix is dropped. Other bodies come back as they
// are, with moved false.
func shiftPosition(body []byte, shift int, scratch []byte) (out []byte, moved bool) {
	for i := 0; i < len(body) && body[i] != 0; {
		end := i + 1
		for end < len(body) && body[end] != 0 {
			end++
		}
		if end >= len(body) {
			return body, false
		}
		if body[i] != 'P' {
			i = end + 1
			continue
		}
		pos, err := strconv.Atoi(string(body[i+1 : end]))
		if err != nil {
			return body, false
		}
		out = append(scratch[:0], body[:i]...)
		if pos -= shift; pos > 0 {
			out = append(out, 'P')
			out = strconv.AppendInt(out, int64(pos), 10)
			out = append(out, 0)
		}
		return append(out, body[end+1:]...), true
	}
	return body, false
}

// prefixChars is the length in characters of the prefix ss.pre, as the
// server counts a statement position.
func (ss *session) prefixChars() int {
	return utf8.RuneCount(ss.pre)
}
