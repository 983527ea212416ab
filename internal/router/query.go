package router

import (
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// onQuery handles a simple-protocol Query.
func (ss *session) onQuery(body []byte) *wire.Error {
	text, err := wire.QueryText(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	sql := ss.cr.String(text) // no copy of a large query
	if ss.unsynced && ss.be != nil && ss.backendPending() {
		// The client's Parse/Bind/Execute without a Sync precede this
		// Query. Should one of them fail, the server skips everything up
		// to the client's Sync, this Query too (no ReadyForQuery of its
		// own): learn that before the Query goes (a round trip, for this
		// rare mix only).
		ss.be.W.Write(wire.FlushMsg)
		if err := ss.drain(true); err != nil {
			return ss.clientFailed(err)
		}
		if ss.skipToSync {
			return nil
		}
	}
	ss.unnamed = nil // a simple Query drops the unnamed statement, as on the server
	if e := ss.checkAccess(sql); e != nil {
		return e
	}

	info := classify(sql)
	// The client's own Parse/Bind/Execute without a Sync, if any, precede
	// this Query as on a direct connection.
	clientUnsynced := ss.unsynced
	if ss.failed && ss.be == nil {
		if (info.kind == kCommit || info.kind == kRollback) && !info.multi {
			// The answers to a pipelined Sync before this still say the
			// transaction is aborted.
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			ss.failed = false
			return ss.reply("ROLLBACK", nil)
		}
		return abortedError()
	}
	g := ss.guardScan(sql, &info)
	if e := ss.refuse(&info, g); e != nil {
		return e
	}
	if info.resetThenMore {
		// The statements after it would run without the shard's path.
		return &wire.Error{Code: "0A000", Message: "RESET ALL followed by more statements in one query",
			Hint: "Send RESET ALL in a query of its own: pgtenant sets the tenant's shard again after it."}
	}
	if info.txnThenMore && ss.srv.cfg.PoolMode == PoolTransaction && ss.inTxn() {
		// Refused whether or not this transaction's settings are local, so
		// that the same query does not fail on one backend and run on
		// another.
		return txnThenMoreError()
	}
	if info.multi && ss.splitsFirst(&info) {
		return ss.onQueryParts(sql, &info)
	}
	if info.laterTenant {
		return &wire.Error{Code: "0A000", Message: "SET, RESET or SHOW of pgtenant.tenant after another statement of the same query",
			Hint: "Name the tenant at the start of the query string (SET pgtenant.tenant = 'id'; ...), or in a query of its own."}
	}
	if info.reservedSet && (info.kind == kSet || info.kind == kReset) && !ss.pathStmt(&info) {
		return reservedSetError(info.setName)
	}
	if info.op != opNone && info.op != opSetConfig {
		switch info.op {
		case opShow:
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			t := ss.localTenant
			if t == "" {
				t = ss.tenant
			}
			ss.cw.Write(wire.AppendTextRowDescription(ss.out[:0], tenantSetting))
			ss.cw.Write(wire.AppendTextDataRow(ss.out[:0], t))
			return ss.reply("SHOW", nil)
		case opSet, opSetLocal:
			local := info.op == opSetLocal
			if local && !ss.inTxn() && !ss.midString {
				return ss.reply("SET", &wire.Error{Severity: "WARNING", Code: "25P01", Message: "SET LOCAL can only be used in transaction blocks"})
			}
			if e := ss.setTenant(info.val, local); e != nil {
				return e
			}
			return ss.reply("SET", nil)
		case opReset:
			ss.tenant = ss.startTenant
			ss.setView()
			tag := "RESET"
			if info.kind == kSet {
				tag = "SET"
			}
			return ss.reply(tag, nil)
		}
	}
	if info.op == opSetConfig && info.param == 0 {
		if e := ss.setTenant(info.val, info.isLocal); e != nil {
			return e
		}
		if info.plainSetConfig {
			// Answered here: no backend round trip to select a tenant.
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			ss.cw.Write(wire.AppendTextRowDescription(ss.out[:0], "set_config"))
			ss.cw.Write(wire.AppendTextDataRow(ss.out[:0], info.val))
			return ss.reply("SELECT 1", nil)
		}
	}
	var newSet *setting
	if !info.multi {
		switch info.kind {
		case kBegin:
			if ss.canDefer() {
				if e := checkTxnStart(sql); e != nil {
					return e // as the server would refuse it, before anything runs
				}
				if ss.pendingBegin != "" {
					return ss.reply(beginTag(sql), &wire.Error{Severity: "WARNING", Code: "25001", Message: "there is already a transaction in progress"})
				}
				ss.pendingBegin, ss.boundDeferred = sql, false
				ss.beginPortal = false // a new block: the last one's portals are gone
				return ss.reply(beginTag(sql), nil)
			}
		case kCommit, kRollback:
			if ss.be == nil || ss.pendingBegin != "" {
				tag := "COMMIT"
				if info.kind == kRollback {
					tag = "ROLLBACK"
				}
				if ss.pendingBegin == "" {
					return ss.reply(tag, noTxnWarning())
				}
				ss.pendingBegin, ss.localTenant = "", ""
				ss.endDeferredSets(info.kind == kCommit)
				return ss.reply(tag, nil)
			}
		case kSet:
			if info.setName == "transaction" || (info.isLocal && ss.inTxn()) {
				if ss.pendingBegin != "" {
					if info.setName == "transaction" {
						// SET TRANSACTION, as the server's grammar has it
						// (SET LOCAL of a setting is not checked here).
						if e := checkTxnStart(sql); e != nil {
							return e
						}
					}
					ss.pendingBegin += ";" + sql
					return ss.reply("SET", nil)
				}
				break
			}
			if info.isLocal {
				if ss.be == nil {
					return ss.reply("SET", &wire.Error{Severity: "WARNING", Code: "25P01", Message: "SET LOCAL can only be used in transaction blocks"})
				}
				break
			}
			// Run on a backend, which checks it; kept when it succeeds.
			newSet = &setting{name: info.setName, stmt: sql}
			if info.setDefault && info.setName == "search_path" {
				newSet = &setting{name: info.setName, reset: true} // the router's path again
			}
		case kSavepoint, kOther:
			if info.kind == kSavepoint || info.rollbackTo {
				newSet = savepointOf(sql)
			}
		case kReset:
			if ss.be == nil && !ss.inTxn() { // (in a deferred BEGIN's block a ROLLBACK undoes it)
				ss.reset(info.setName)
				return ss.reply("RESET", nil)
			}
			// Kept when the backend has run it (see setDone).
			newSet = &setting{name: info.setName, reset: true}
		case kListen:
			if ss.srv.cfg.PoolMode == PoolTransaction {
				return &wire.Error{Code: "0A000", Message: "LISTEN is not supported in transaction pool mode",
					Hint: "Connect to a router in session pool mode to use LISTEN/NOTIFY."}
			}
			// (Listening once the server says so: see drain.)
		case kUnlisten:
			if ss.be == nil {
				ss.listening = false // no backend listens
				return ss.reply("UNLISTEN", nil)
			}
			// (The session may switch tenants again once the server has
			// stopped listening: see noteUnlisten.)
		case kDiscard:
			if !ss.inTxn() && info.setName == "all" { // the server refuses it in a transaction (25001)
				ss.sets = nil
				ss.resig()
				ss.pathNext = 0 // the client's search_path is gone with the rest
				ss.deallocateAll()
				ss.unnamed = nil
				ss.sqlStmts = nil
				if ss.be == nil {
					ss.listening = false // no backend listens
					return ss.reply("DISCARD ALL", nil)
				}
			}
		case kDeallocate:
			if tag, e, ok := ss.answerDeallocate(sql, &info); ok {
				if e != nil {
					return e
				}
				return ss.reply(tag, nil)
			}
		case kSelect:
			if info.pathSetConfig && !info.isLocal && ss.mayOwnPath() {
				newSet = &setting{name: "search_path", stmt: pathSetting(info.val)}
			} else if info.callsSetConfig && !info.localSetConfig {
				if name, ok := sessionSetConfig(sql); ok {
					newSet = &setting{name: name, stmt: sql}
				}
			}
		}
	}
	var msets *stringSets
	if info.multi && (info.kind == kSet || info.kind == kReset || info.laterSet || info.callsSetConfig ||
		info.kind == kSavepoint || info.laterSavepoint || info.rollbackTo) {
		msets = stringSetsOf(sql) // (rare: not on the hot path)
	}
	tenant := ss.pickTenant(&info)
	if info.kind == kUnlisten && !info.multi && ss.listening && ss.be != nil {
		tenant = ss.beTenant // the backend that listens, whichever tenant is selected
	}
	if tenant == "" {
		if !(ss.be != nil && ss.beTenant == anyTenant && ss.status != 'I') {
			if ok, e := ss.noShard(&info, sql); !ok {
				return e
			}
		}
		tenant = anyTenant
		if ss.be != nil && ss.status != 'I' {
			tenant = ss.beTenant
		}
	}
	ddlNote, e := ss.ddlCheck(&info, tenant)
	if e != nil {
		return e
	}
	deferred := ss.pendingBegin != ""
	if e := ss.ensureBackend(tenant); e != nil {
		return e
	}
	ss.noteShardUse(&info)
	if ss.status == 'E' && info.multi && (ss.setupDue || ss.setupEach) && info.kind != kCommit && info.kind != kRollback && !info.rollbackTo {
		// The server refuses the first statement, and with it the rest.
		return abortedError()
	}
	if ss.status == 'E' && info.multi && (ss.setupDue || ss.setupEach) {
		// The setup would fail in the aborted transaction, and the
		// statements after its end would run without it.
		return txnThenMoreError()
	}
	// Inside a transaction block for sure: the deferred BEGIN just sent, or
	// one open with every answer read. Elsewhere nothing of the router's own
	// may precede the Query unsynced (see sendQuerySetup).
	inBlock := (deferred && ss.pendingBegin == "") || (ss.status != 'I' && !ss.backendPending())
	nPre := 0
	if inBlock {
		ss.sendSetup(&info, true)
	} else if nPre = ss.combinedSetup(&info, newSet); nPre == 0 {
		ss.sendQuerySetup(&info)
	}
	if ss.localOpen && info.txnThenMore {
		return txnThenMoreError()
	}
	ss.noteEnding(&info)
	be := ss.be
	ss.noteServerState(&info)
	ss.notePath(&info)
	if !inBlock && ss.unsynced && !clientUnsynced {
		// Statements of the router's own (noteEnding's) end with a Sync
		// of their own, for the reason given at sendQuerySetup.
		be.W.Write(wire.SyncMsg)
		ss.push(expect{kind: eSync, swallow: true})
	}
	ss.ddlSent(&info)
	if ddlNote != nil {
		ss.push(expect{kind: eSynth, synth: ddlNote})
	}
	if nPre > 0 {
		ss.writeCombinedQuery(body)
		ss.push(expect{kind: eQuery, skip: uint8(nPre), posShift: ss.prefixChars(), unlisten: info.unlistensAll()})
	} else {
		be.W.WriteFrame(wire.MsgQuery, body)
		ss.push(expect{kind: eQuery, set: newSet, msets: msets, prep: ss.noteSQLStmts(g), unlisten: info.unlistensAll()})
	}
	if ss.cr.Buffered() == 0 || ss.syncs > 16 || ss.setupOpen || ss.localOpen || ss.resetDue() {
		if err := ss.drain(false); err != nil {
			return ss.clientFailed(err)
		}
	}
	return nil
}

// resetDue reports whether the session tenant may be reset when the
// transaction in progress ends (Config.ResetTenantAfterTransaction): its
// answer is then read before the client's next message is routed, so
// pipelined statements never race the reset.
func (ss *session) resetDue() bool {
	return ss.srv.cfg.ResetTenantAfterTransaction && ss.tenant != ss.startTenant
}

// noteShardUse notes a statement executed on the attached backend: one on
// a tenant's shard, other than naming the tenant, sets shardUsed.
func (ss *session) noteShardUse(info *stmtInfo) {
	if info.op == opNone && ss.beTenant != anyTenant && ss.beTenant != descTenant {
		ss.shardUsed = true
	}
}

// splitsFirst reports whether the first statement of a query string of
// several is one the router answers itself and the rest depends on: SET
// [LOCAL], RESET or SHOW of pgtenant.tenant, or a BEGIN it can defer that
// such a statement follows.
func (ss *session) splitsFirst(info *stmtInfo) bool {
	switch info.op {
	case opSet, opSetLocal, opReset, opShow:
		return true
	}
	return info.kind == kBegin && info.laterTenant && ss.canDefer() && !ss.failed
}

// onQueryParts runs a query string whose first statement the router
// answers itself (see splitsFirst): that statement, without a
// ReadyForQuery, then the rest of the string as a Query of its own, so a
// tenant it names applies to the rest (psql -c "SET pgtenant.tenant = 'x';
// SELECT ..."). SET LOCAL outside a transaction block lasts to the end of
// the string, as in the implicit transaction a server runs it in.
//
// Unlike on a server, a session SET of the tenant stays when a later
// statement of the string fails.
func (ss *session) onQueryParts(sql string, info *stmtInfo) *wire.Error {
	first, rest := strings.TrimRight(sql[:info.firstEnd-1], " \t\r\n\f\v"), sql[info.firstEnd:]
	inTxn := ss.inTxn()
	ss.midString = true
	werr := ss.onQuery(append([]byte(first), 0))
	ss.midString = false
	if werr != nil {
		return werr
	}
	werr = ss.onQuery(append([]byte(rest), 0))
	if !inTxn && !ss.inTxn() {
		// A SET LOCAL ends with the string: learn its end before the
		// client's next message is routed.
		if err := ss.drain(false); err != nil && werr == nil {
			werr = ss.clientFailed(err)
		}
		if werr != nil && !ss.inTxn() {
			ss.localTenant = ""
		}
	}
	return werr
}

// reset forgets a session setting (all of them for "all", the tenant
// included) as RESET does.
func (ss *session) reset(name string) {
	if name == "all" {
		ss.sets = nil
		ss.tenant = ss.startTenant
		ss.setView()
	} else {
		ss.recordSet(name, "")
	}
	ss.resig()
}

// noteServerState updates what the router knows of the attached backend
// for a statement about to run on it: DISCARD and DEALLOCATE drop prepared
// statements (the router's own too) and settings; RESET ALL resets
// search_path and the tenant id; session settings changed
// in ways the router does not track (a SET among several statements,
// set_config of another setting) mark the backend's settings as unknown,
// so that the next client on it gets RESET ALL and its own settings
// instead of inheriting them.
func (ss *session) noteServerState(info *stmtInfo) {
	be := ss.be
	if info.kind == kDiscard || info.kind == kDeallocate || info.laterDiscard {
		be.Prepared = make(map[string]uint64)
		be.ForgetUnnamed()
		be.Schema, be.Tenant, be.SessionSig = "\x00", "\x00", "\x00"
		return
	}
	if info.kind == kReset && info.setName == "all" {
		// The server's RESET ALL resets search_path and the tenant id too,
		// local settings included: what follows in the pipeline (or the
		// transaction) gets them again.
		be.Schema, be.Tenant = "\x00", "\x00"
		ss.markSetupEach()
	}
	if info.laterSet || (info.multi && (info.kind == kSet || info.kind == kReset)) ||
		(info.callsSetConfig && !info.plainSetConfig && !info.localSetConfig && !(info.pathSetConfig && ss.mayOwnPath())) {
		// set_config may have changed search_path or the tenant id too.
		be.SessionSig, be.Schema, be.Tenant = "\x00", "\x00", "\x00"
		ss.markSetupEach()
	}
}

// pathStmt reports whether a statement is one by which a client sets its
// own search_path (see ownsPath), allowed in session pool mode: exactly
// one SET [SESSION|LOCAL] search_path, RESET search_path, or SELECT
// set_config('search_path', v, b) with v a literal or a parameter and b a
// literal. Other spellings (a quoted or escaped name, set_config inside a
// larger statement or a DO block) stay refused: the router could not tell
// which path is in force.
func (ss *session) pathStmt(info *stmtInfo) bool {
	if info.multi || !ss.mayOwnPath() {
		return false
	}
	return ((info.kind == kSet || info.kind == kReset) && info.setName == "search_path") || info.pathSetConfig
}

// notePath notes, as a statement goes to the backend, what it does to the
// client's own search_path (see ownsPath): a reset makes the statements
// after it, in the same pipeline or transaction, get the shard's path again.
func (ss *session) notePath(info *stmtInfo) {
	if !ss.mayOwnPath() || info.multi {
		return
	}
	set := (info.kind == kSet && info.setName == "search_path" && !info.isLocal && !info.setDefault) ||
		(info.pathSetConfig && !info.isLocal)
	reset := (info.kind == kReset && (info.setName == "search_path" || info.setName == "all")) ||
		(info.kind == kSet && info.setName == "search_path" && !info.isLocal && info.setDefault)
	switch {
	case set:
		ss.pathNext = 1
	case reset && ss.ownsPath():
		ss.pathNext = -1
		ss.be.Schema = "\x00"
		ss.markSetupEach()
	}
}

// setDone notes a client's session SET that the backend ran without error.
// It takes effect for good only when its transaction commits (an implicit
// one at the next idle ReadyForQuery): until then the backend's settings
// are unknown, and an error or a ROLLBACK undoes it (endTxnSets).
func (ss *session) setDone(st *setting) {
	if st.sp != spNone {
		ss.savepointDone(st)
		return
	}
	ss.txnSets = append(ss.txnSets, *st)
	if ss.be != nil {
		ss.be.SessionSig = "\x00"
	}
}

// endTxnSets records the SETs of a transaction that ended if it committed,
// and drops them if not. The backend's settings stay unknown either way (the
// transaction may also have changed what the router does not track): the
// next statement on it gets RESET ALL and the session's settings first.
func (ss *session) endTxnSets(committed bool) {
	if committed {
		for _, st := range ss.txnSets {
			if st.sp != spNone {
				continue
			} else if st.reset {
				ss.reset(st.name)
			} else {
				ss.recordSet(st.name, st.stmt)
			}
		}
	}
	ss.txnSets = ss.txnSets[:0]
}

// recordSet records (stmt != "") or forgets (stmt == "") a session setting.
func (ss *session) recordSet(name, stmt string) {
	out := ss.sets[:0:0]
	for _, s := range ss.sets {
		if s.name != name {
			out = append(out, s)
		}
	}
	if stmt != "" {
		stmt = strings.TrimRight(strings.TrimSpace(stmt), ";")
		if strings.Contains(stmt, "--") {
			stmt += "\n" // a -- comment at its end would hide the next one (resig)
		}
		out = append(out, setting{name: name, stmt: stmt})
	}
	ss.sets = out
	ss.resig()
}

// unlistensAll reports whether the statement is UNLISTEN * alone: its
// CommandComplete (a plain "UNLISTEN") says the server stopped listening.
func (info *stmtInfo) unlistensAll() bool {
	return info.kind == kUnlisten && info.setName == "*" && !info.multi
}

// noteUnlisten follows, on a CommandComplete of the attached backend,
// whether the server stops listening for the session (session.listening
// holds it to its tenant while it listens): UNLISTEN * (sent alone, e.
// unlisten) or DISCARD ALL completed, however sent (Query or Execute,
// alone or in a transaction block); it takes effect when its transaction
// commits, so the guard is lifted at the next ReadyForQuery saying idle
// ('I'), unless an error (a failed statement, a failed block, a
// savepoint's rollback) or a ROLLBACK, which may undo it, or a LISTEN
// (or a DO block or CALL, which may hide one) came in between. What the router cannot attribute (UNLISTEN * among
// other statements of one Query) keeps the guard, as before.
func (ss *session) noteUnlisten(e *expect, body []byte) {
	switch string(body) {
	case "DISCARD ALL\x00":
		ss.unlistenDone = true
	case "UNLISTEN\x00":
		ss.unlistenDone = ss.unlistenDone || e.unlisten
	case "LISTEN\x00", "ROLLBACK\x00", "DO\x00", "CALL\x00":
		ss.unlistenDone = false // (a DO block or procedure may LISTEN)
	}
}
