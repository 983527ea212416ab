package router

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// onParse records a client statement and answers ParseComplete itself; the
// statement is prepared on a backend when first bound or described.
func (ss *session) onParse(body []byte) *wire.Error {
	pm, err := wire.DecodeParse(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	var def *stmtDef
	if len(pm.Name) == 0 {
		def = ss.recentUnnamed(pm.Query, pm.Rest)
	}
	reused := def != nil // its checks below passed before: they depend on the text only
	if reused {
		// Parsed afresh, as on a server: what a Describe of the earlier
		// Parse told the client is not checked against (see stale.go).
		def.shape, def.pending, def.params = 0, 0, def.params[:0]
		// And the server must analyse it afresh too (prepareOn): a schema
		// change the router did not see (pgtenant migrate's) would
		// otherwise meet the earlier Parse's statement, and 0A000.
		def.parses++
	}
	if def == nil {
		q := ss.cr.String(pm.Query) // no copy of a large statement
		if e := ss.checkAccess(q); e != nil {
			return e
		}
		def = &stmtDef{query: q, orig: q, types: append([]byte(nil), pm.Rest...), info: classify(q), gen: ss.srv.stmtGen.Load()}
		def.guard = ss.guardScan(q, &def.info)
		if def.info.op == opShow && !def.info.multi {
			// Answered by the backend the tenant routes to.
			def.query = `SELECT pg_catalog.current_setting('pgtenant.tenant_id', true) AS "pgtenant.tenant"`
		}
	}
	if e := ss.refuse(&def.info, def.guard); e != nil {
		return e
	}
	if def.info.kind == kBegin && !def.info.multi && !reused {
		// The router may answer its Bind itself (a deferred BEGIN): refuse a
		// malformed one now, as the server's Parse would.
		if e := checkTxnStart(def.orig); e != nil {
			return e
		}
	}
	if len(pm.Name) != 0 {
		if _, ok := ss.stmts[string(pm.Name)]; ok {
			if ss.localStatus() == 'E' && !ss.backendPending() && !txnExit(&def.info) {
				return abortedError() // the server's check before the name's
			}
			return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", pm.Name)}
		}
		if _, ok := ss.sqlStmts[string(pm.Name)]; ok {
			// Made with SQL PREPARE: one namespace on the server.
			return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", pm.Name)}
		}
		if ss.srv.cfg.PoolMode == PoolSession {
			// The client's name is the server's, as with pgbouncer in
			// session mode: pg_prepared_statements shows it.
			if strings.HasPrefix(string(pm.Name), routerStmtPrefix) {
				return reservedStmtError(string(pm.Name))
			}
			def.server, def.clientName = string(pm.Name), true
		} else {
			def.server = ss.srv.serverName(def.query, pm.Rest)
		}
		ss.stmts[string(pm.Name)] = def
		// A large text stays counted in the budget for client messages
		// for as long as the statement is kept. (Not an unnamed one: a
		// backend keeps it until its next unnamed statement, long after
		// the client is gone.)
		wire.KeepWith(ss.cr, def)
	}
	prev := ss.unnamed
	if len(pm.Name) == 0 {
		ss.unnamed = def
		ss.keepUnnamed(def)
	}
	sent, werr := ss.parseNow(def)
	if werr == nil && !sent && ss.localStatus() == 'E' && !ss.backendPending() && !txnExit(&def.info) {
		// As the server's Parse in an aborted transaction, which the
		// router would otherwise answer itself for a statement it defers
		// or answers (BEGIN, SHOW pgtenant.tenant, ...).
		werr = abortedError()
	}
	if werr != nil {
		// Not prepared, as a server would leave it.
		if len(pm.Name) != 0 {
			delete(ss.stmts, string(pm.Name))
		} else {
			ss.unnamed = nil
		}
		return werr
	}
	if !sent {
		ss.push(expect{kind: eSynth, synth: wire.ParseComplete})
	}
	if len(pm.Name) != 0 || sent {
		q := &ss.queue[len(ss.queue)-1]
		q.stmt, q.stmtName = def, string(pm.Name)
	}
	if len(pm.Name) == 0 {
		// Undone should the server skip it (see undoSkipped).
		q := &ss.queue[len(ss.queue)-1]
		q.stmt, q.undo, q.prev = def, undoUnnamed, prev
	}
	return nil
}

// beginForHeldPortal sends a deferred BEGIN before an Execute or Describe
// of a portal in session mode, whose backend may hold a WITH HOLD cursor's
// portal of that name (never the unnamed one): it then runs inside the
// block, as on a server (an error there aborts the block), not answered
// 34000 by the router.
func (ss *session) beginForHeldPortal(named bool) *wire.Error {
	if !named || ss.pendingBegin == "" || ss.boundDeferred || ss.be == nil || ss.srv.cfg.PoolMode != PoolSession ||
		ss.beTenant == "" || ss.beTenant == anyTenant || ss.beTenant == descTenant || ss.failed {
		return nil
	}
	return ss.ensureBackend(ss.beTenant)
}

// txnExit reports whether info is a statement an aborted transaction
// accepts (PostgreSQL's IsTransactionExitStmt: COMMIT, ROLLBACK, ROLLBACK
// TO; PREPARE TRANSACTION is left to the server).
func txnExit(info *stmtInfo) bool {
	return !info.multi && (info.kind == kCommit || info.kind == kRollback || info.rollbackTo)
}

// recentUnnamed returns the client's unnamed statement of the same text and
// parameter types as one of its last few unnamed Parses (see keepUnnamed),
// or nil. A client of the extended protocol (pgbench -M extended, drivers
// without a statement cache) parses the same few texts over and over as
// the unnamed statement, in turn: the text is then neither copied nor
// classified again, and nothing is allocated. What a stmtDef caches is the
// text's (its classification, the guard's finding, noShard) or a backend's
// (be.Unnamed is compared by identity, and a backend that had another
// unnamed statement since gets the Parse again); a reused statement forgets
// what a Describe told the client of it (onParse): a Parse starts afresh.
func (ss *session) recentUnnamed(query, types []byte) *stmtDef {
	gen := ss.srv.stmtGen.Load()
	if u := ss.unnamed; u.reusableFor(query, types, gen) {
		return u
	}
	for _, u := range ss.recent {
		if u.reusableFor(query, types, gen) {
			return u
		}
	}
	return nil
}

// reusableFor reports whether def, an unnamed statement parsed before, can
// stand for a Parse of query with types: the same text and types, not found
// stale by a server, and parsed since the last schema change the router saw
// (Server.stmtGen).
func (def *stmtDef) reusableFor(query, types []byte, gen uint64) bool {
	return def != nil && def.orig == string(query) && string(def.types) == string(types) && !def.stale && def.gen == gen
}

// keepUnnamed remembers def, the client's unnamed statement now, for
// recentUnnamed, unless it is long (a session keeps a few short texts, not
// a large message's buffer: see wire.Reader.String).
func (ss *session) keepUnnamed(def *stmtDef) {
	if len(def.orig)+len(def.types) > maxRecentText {
		return
	}
	for _, u := range ss.recent {
		if u == def {
			return
		}
	}
	copy(ss.recent[1:], ss.recent[:len(ss.recent)-1])
	ss.recent[0] = def
}

// maxRecentText is the longest unnamed statement (text and parameter
// types) keepUnnamed keeps.
const maxRecentText = 1024

// dropParsed forgets the client statement whose Parse e answers, when the
// server refused the Parse or skipped it after an earlier error of the
// pipeline: as on a server, it does not exist.
func (ss *session) dropParsed(e *expect) {
	// (The unnamed statement: see undoSkipped.)
	if e.stmt != nil && e.stmtName != "" && ss.stmts[e.stmtName] == e.stmt {
		delete(ss.stmts, e.stmtName)
	}
}

// undoSkipped undoes what the queued message i, a Parse or a Close the
// server skipped after an earlier error of the pipeline (or, i being 0,
// refused), changed in the router's idea of the client's statements: on a
// server it changed nothing. (A skipped Parse of the unnamed statement ran
// as another statement's at the next Bind; a skipped Close S made a
// statement the server keeps unknown.) drain calls it for the skipped
// messages from the last to the first, so that each finds the state it
// left.
func (ss *session) undoSkipped(i int) {
	q := &ss.queue[i]
	if (q.kind == eParse || q.kind == eSynth) && q.undo != undoClose {
		ss.dropParsed(q)
	}
	switch {
	case q.undo == undoUnnamed:
		to := q.prev
		if i == 0 {
			to = nil // refused: a server drops its unnamed statement first
		}
		ss.restoreUnnamed(i, q.stmt, to)
	case q.undo == undoClose && q.kind == eClose && q.swallow:
		// The router's Close of a server statement (closeOnServer).
		if ss.be != nil {
			ss.be.Prepared[q.name] = 0
		}
	case q.undo == undoClose && q.stmtName == "":
		ss.restoreUnnamed(i, nil, q.prev)
	case q.undo == undoClose && q.stmt != nil:
		if _, ok := ss.stmts[q.stmtName]; !ok {
			ss.stmts[q.stmtName] = q.stmt
		}
	case q.undo == undoClose && q.kind == eClose:
		// A Close of a statement made with SQL PREPARE.
		if ss.sqlStmts != nil {
			ss.sqlStmts[q.stmtName] = struct{}{}
		}
	case q.undo == undoBeginPortal:
		ss.beginPortal = true
	case q.undo == undoNoBeginPortal:
		ss.beginPortal = false
	}
}

// undoBeginPortalAtSkip marks the last queued response, a Bind's that
// changed session.beginPortal from was, so that the change is undone should
// the server skip the Bind (see undoSkipped).
func (ss *session) undoBeginPortalAtSkip(was bool) {
	if len(ss.queue) == 0 || ss.queue[len(ss.queue)-1].undo != 0 {
		return
	}
	if was {
		ss.queue[len(ss.queue)-1].undo = undoBeginPortal
	} else {
		ss.queue[len(ss.queue)-1].undo = undoNoBeginPortal
	}
}

// restoreUnnamed makes to the client's unnamed statement again where the
// skipped message i made it from, and the unnamed statement before the
// next queued message that changes it.
func (ss *session) restoreUnnamed(i int, from, to *stmtDef) {
	if ss.unnamed == from {
		ss.unnamed = to
	}
	for j := i + 1; j < len(ss.queue); j++ {
		if q := &ss.queue[j]; q.undo == undoUnnamed || (q.undo == undoClose && q.stmtName == "" && !q.swallow) {
			if q.prev == from {
				q.prev = to
			}
			return
		}
	}
}

// parseNow sends def's Parse to a backend at once, its answer (ParseComplete
// or the server's error) being the client's, when the tenant it would run
// for is known and nothing else is bound to the session in the meantime: a
// client that prepares a statement (libpq's PQprepare: Parse, Sync) then
// hears of a syntax error or a missing table at once, as from a server.
// Otherwise (no tenant yet, a statement the router answers itself) the
// router answers ParseComplete and the statement is prepared where it is
// first bound or described.
//
// An error attaching the backend (the shard is being moved, the node is
// down, a transaction was cut) is the Parse's.
func (ss *session) parseNow(def *stmtDef) (bool, *wire.Error) {
	info := &def.info
	if info.op != opNone || ss.failed || ss.skipToSync || ss.pendingBegin != "" {
		return false, nil
	}
	if !info.multi && (info.kind == kBegin || info.kind == kCommit || info.kind == kRollback) {
		return false, nil
	}
	tenant := ss.pickTenant(info)
	if tenant == "" || (ss.be != nil && tenant != ss.beTenant) {
		return false, nil
	}
	if m := ss.srv.mp.Load(); m == nil {
		return false, nil
	} else if _, e := ss.locate(m, tenant); e != nil {
		return false, nil // reported when the statement is bound
	}
	if e := ss.ensureBackend(tenant); e != nil {
		return false, e
	}
	ss.sendParseSetup(def)
	sent, _ := ss.prepareOn(def, false)
	return sent, nil
}

// deallocate forgets the client's statement name, if it has one, and
// reports whether it had.
func (ss *session) deallocate(name string) bool {
	def, ok := ss.stmts[name]
	if !ok {
		return false
	}
	delete(ss.stmts, name)
	if !def.clientName {
		ss.srv.forgetStmt(def.server, def.query, def.types)
	}
	return true
}

// routerStmtPrefix starts the names of the router's own statements on a
// backend (pgtenant_setup, pgtenant_begin, ...; in transaction mode the
// client's statements too). In session mode, where client statement names
// go to the backend as they are, a client name with it is refused.
const routerStmtPrefix = "pgtenant_"

// reservedStmtError refuses a client statement name that starts with
// routerStmtPrefix in session mode.
func reservedStmtError(name string) *wire.Error {
	return &wire.Error{Code: "42939", Message: fmt.Sprintf("prepared statement name %q is reserved: names starting with %q belong to pgtenant", name, routerStmtPrefix),
		Hint: "Name the statement without the pgtenant_ prefix."}
}

// closeOnServer closes, in session mode, the server statements of a
// statement the client closed, once no other statement of the client
// shares them: the backend is the client's own, and as on a direct
// connection pg_prepared_statements shows what the client keeps prepared.
// (In transaction mode server statements are shared by the backend's
// clients and stay until Config.MaxPrepared trims them.) What the router
// records can only err towards "missing" (see closeFirst): should the
// server skip the Close (an error earlier in the pipeline), the statement
// is closed again before it is next prepared.
func (ss *session) closeOnServer(def *stmtDef) {
	if ss.srv.cfg.PoolMode != PoolSession || ss.be == nil || def.server == "" {
		return
	}
	if def.clientName {
		// Under the client's own name: at most one on the backend.
		if _, ok := ss.be.Prepared[def.server]; ok {
			delete(ss.be.Prepared, def.server)
			ss.out = wire.AppendTarget(ss.out[:0], 'S', def.server)
			ss.be.W.WriteFrame(wire.MsgClose, ss.out)
			ss.push(expect{kind: eClose, swallow: true, undo: undoClose, name: def.server})
		}
		return
	}
	for _, d := range ss.stmts {
		if d.server == def.server {
			return
		}
	}
	prefix := def.server + "_" // one per shard schema (serverStmt)
	for name := range ss.be.Prepared {
		if strings.HasPrefix(name, prefix) {
			delete(ss.be.Prepared, name)
			ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
			ss.be.W.WriteFrame(wire.MsgClose, ss.out)
			ss.push(expect{kind: eClose, swallow: true, undo: undoClose, name: name})
		}
	}
}

// noteSQLStmts notes, as a text goes to the session-mode backend, the
// statement names its own statements DEALLOCATE (forgotten now: a name
// that was not there stays absent) and returns those it PREPAREs, which
// the text's CommandComplete PREPAREs record (see expect.prep).
func (ss *session) noteSQLStmts(g *guardFinding) []string {
	if g == nil || ss.srv.cfg.PoolMode != PoolSession {
		return nil
	}
	for _, name := range g.deallocs {
		delete(ss.sqlStmts, name)
	}
	if g.deallocAll {
		ss.sqlStmts = nil
	}
	return g.prepares
}

// notePrepared records a name the client's SQL PREPARE made on its backend.
func (ss *session) notePrepared(name string) {
	if ss.sqlStmts == nil {
		ss.sqlStmts = make(map[string]struct{})
	}
	ss.sqlStmts[name] = struct{}{}
}

// deallocateAll forgets all the client's statements.
func (ss *session) deallocateAll() {
	for name := range ss.stmts {
		ss.deallocate(name)
	}
}

func (ss *session) lookup(name []byte) (*stmtDef, *wire.Error) {
	if len(name) == 0 {
		if ss.unnamed == nil {
			return nil, &wire.Error{Code: "26000", Message: "unnamed prepared statement does not exist"}
		}
		return ss.unnamed, nil
	}
	def, ok := ss.stmts[string(name)]
	if !ok {
		return nil, &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)}
	}
	return def, nil
}

// onBind routes the statement being bound and forwards the Bind.
func (ss *session) onBind(body []byte) *wire.Error {
	bm, err := wire.DecodeBind(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	if ss.synthTag != "" && string(bm.Portal) == ss.synthName {
		ss.synthTag = "" // replaced, as a server replaces the portal
	}
	def, werr := ss.lookup(bm.Stmt)
	if werr != nil {
		return werr
	}
	if k := def.info.kind; !def.info.multi && (k == kBegin || k == kCommit || k == kRollback) {
		// The router may answer this Bind itself: check the parameter
		// count first, as the server does.
		if n := bindParamCount(bm.Rest); n > 0 {
			return &wire.Error{Code: "08P01", Message: fmt.Sprintf("bind message supplies %d parameters, but prepared statement \"%s\" requires 0", n, bm.Stmt)}
		}
	}
	if len(bm.Portal) == 0 && (ss.localStatus() != 'E' || txnExit(&def.info)) {
		// The unnamed portal is replaced (in an aborted block a server
		// refuses the Bind first): is it a transaction start's (or a
		// ROLLBACK TO's) now?
		ss.beginPortal = (def.info.kind == kBegin || def.info.rollbackTo) && !def.info.multi
	}
	if ss.failed && ss.be == nil {
		if def.info.kind == kCommit || def.info.kind == kRollback {
			ss.synthPortal(bm.Portal, "ROLLBACK")
			return nil
		}
		if sp := savepointOf(def.orig); def.info.rollbackTo && !def.info.multi && sp != nil {
			// A block no server holds has no savepoint: the server binds
			// ROLLBACK TO in an aborted block, and its Execute fails
			// (3B001), not the Bind with 25P02 (seed 152).
			ss.synthPortal(bm.Portal, "ROLLBACK")
			ss.synthValue = noSavepointMark + sp.name
			return nil
		}
		return abortedError()
	}
	if def.guard != nil {
		if e := def.guard.checkParams(bm.Rest); e != nil {
			return e
		}
	}
	if !def.info.multi {
		switch def.info.kind {
		case kDeallocate:
			if tag, e, ok := ss.answerDeallocate(def.orig, &def.info); ok {
				if e != nil {
					return e
				}
				ss.synthPortal(bm.Portal, tag)
				return nil
			}
		case kBegin:
			if ss.canDefer() {
				already := ss.pendingBegin != ""
				if !already {
					ss.pendingBegin, ss.boundDeferred = def.query, false
				}
				if !already && len(bm.Portal) != 0 {
					ss.beginPortal = false // a new block: the last one's portals are gone
				}
				ss.synthPortal(bm.Portal, beginTag(def.query))
				if already {
					ss.synthValue = inTxnMark // its Execute warns, as the server's
				}
				return nil
			}
		case kCommit, kRollback:
			if ss.be == nil || ss.pendingBegin != "" {
				tag := "COMMIT"
				if def.info.kind == kRollback {
					tag = "ROLLBACK"
				}
				noTxn := ss.be == nil && ss.pendingBegin == ""
				if !noTxn {
					ss.endDeferredSets(def.info.kind == kCommit)
				}
				ss.pendingBegin, ss.localTenant = "", ""
				ss.synthPortal(bm.Portal, tag)
				if noTxn {
					ss.synthValue = noTxnMark // its Execute warns, as the server's
				}
				return nil
			}
		}
	}
	if k := def.info; k.reservedSet && (k.kind == kSet || k.kind == kReset) && !ss.pathStmt(&k) {
		return reservedSetError(k.setName)
	}
	if ss.portalSet != nil && ss.portalSetName == string(bm.Portal) {
		ss.portalSet = nil // the portal is replaced before it ran
	}
	if k := def.info; k.kind == kSet && k.op == opNone && !k.multi && !k.isLocal && k.setName != "transaction" && (!k.reservedSet || ss.pathStmt(&k)) {
		ss.portalSet = &setting{name: k.setName, stmt: def.orig}
		if k.setDefault && k.setName == "search_path" {
			ss.portalSet = &setting{name: k.setName, reset: true}
		}
		ss.portalSetName = string(bm.Portal)
	}
	if k := def.info; k.pathSetConfig && !k.isLocal && ss.mayOwnPath() {
		v := k.val
		if k.param > 0 {
			p, _, ok := wire.BindParam(bm.Rest, k.param-1)
			if !ok || p == nil {
				return &wire.Error{Code: "22023", Message: "set_config of search_path needs a non-null value through pgtenant",
					Hint: "Pass the search_path as a string."}
			}
			v = string(p)
		}
		ss.portalSet = &setting{name: "search_path", stmt: pathSetting(v)}
		ss.portalSetName = string(bm.Portal)
	}
	if k := def.info; (k.kind == kSavepoint || k.rollbackTo) && !k.multi {
		if ss.portalSet = savepointOf(def.orig); ss.portalSet != nil {
			ss.portalSetName = string(bm.Portal)
		}
	}
	if k := &def.info; k.kind == kSelect && k.callsSetConfig && k.op == opNone && !k.localSetConfig && !k.pathSetConfig && !k.multi &&
		!strings.Contains(def.orig, "$") { // (literals only; not the tenant's, RLS's set_config($1) each Bind)
		// SELECT set_config('x', 'v', false): kept as SET x is (the
		// Query path's sessionSetConfig).
		if name, ok := sessionSetConfig(def.orig); ok {
			ss.portalSet = &setting{name: name, stmt: def.orig}
			ss.portalSetName = string(bm.Portal)
		}
	}
	if def.info.paramSetConfig { // SELECT set_config('x', $1, false): as above, with the Bind's value
		if st := bindSetConfig(def, bm.Rest); st != nil {
			ss.portalSet, ss.portalSetName = st, string(bm.Portal)
		}
	}
	if k := def.info; k.kind == kReset && k.op == opNone && (!k.reservedSet || ss.pathStmt(&k)) {
		if ss.be == nil && !ss.inTxn() { // (in a deferred BEGIN's block a ROLLBACK undoes it)
			ss.reset(k.setName)
			ss.synthPortal(bm.Portal, "RESET")
			return nil
		}
		ss.portalSet = &setting{name: k.setName, reset: true}
		ss.portalSetName = string(bm.Portal)
	}
	switch def.info.op {
	case opSet, opSetLocal:
		if def.info.op == opSet || ss.inTxn() {
			if e := ss.setTenant(def.info.val, def.info.op == opSetLocal); e != nil {
				return e
			}
		}
	case opReset:
		ss.tenant = ss.startTenant
		ss.setView()
	}
	if def.info.op == opSetConfig {
		v := def.info.val
		if def.info.param > 0 {
			p, _, ok := wire.BindParam(bm.Rest, def.info.param-1)
			if !ok || p == nil {
				return &wire.Error{Code: "22023", Message: "set_config of pgtenant.tenant needs a non-null tenant id"}
			}
			v = string(p)
		}
		if e := ss.setTenant(v, def.info.isLocal); e != nil {
			return e
		}
		if def.info.plainSetConfig {
			ss.synthPortal(bm.Portal, "SELECT 1")
			ss.synthRow, ss.synthValue, ss.synthFormat = true, v, wire.BindResultFormat(bm.Rest)
			return nil
		}
	}
	var ddlNote []byte
	if def.info.ddl {
		t := ss.pickTenant(&def.info)
		if t == "" && ss.be != nil && ss.status != 'I' {
			t = ss.beTenant
		}
		var e *wire.Error
		if ddlNote, e = ss.ddlCheck(&def.info, t); e != nil {
			return e
		}
	}
	if e := ss.route(def, false); e != nil {
		return e
	}
	ss.noteShardUse(&def.info)
	ss.sendSetup(&def.info, true)
	if e := ss.ensurePrepared(def); e != nil {
		if e == skipRest {
			return nil
		}
		return e
	}
	ss.noteServerState(&def.info)
	ss.notePath(&def.info)
	ss.noteEnding(&def.info)
	if prep := ss.noteSQLStmts(def.guard); prep != nil {
		ss.portalPrep, ss.portalPrepName = prep, string(bm.Portal)
	}
	ss.ddlSent(&def.info)
	name := ss.serverStmt(def)
	ss.out = wire.AppendBind(ss.out[:0], bm.Portal, name, bm.Rest)
	ss.be.W.WriteFrame(wire.MsgBind, ss.out)
	ss.boundDeferred = ss.boundDeferred || ss.pendingBegin != ""
	if ddlNote != nil {
		ss.push(expect{kind: eSynth, synth: ddlNote})
	}
	unnamedBind := false
	if len(bm.Portal) == 0 {
		ss.clientPortal = true
		if ss.ownUnnamed {
			// Replaces the router's portal, unless the server refuses or
			// skips it: the Sync learns which (see drain).
			ss.ownUnnamed, ss.unnamedDoubt, unnamedBind = false, true, true
		}
	}
	if ss.unlistenBound = def.info.unlistensAll(); ss.unlistenBound {
		ss.unlistenPortal = string(bm.Portal)
	}
	ss.push(expect{kind: eBind, name: name, stmt: def, unnamedBind: unnamedBind})
	return nil
}

var (
	bindComplete = []byte{wire.MsgBindComplete, 0, 0, 0, 4}
	noParams     = []byte{wire.MsgParamDesc, 0, 0, 0, 6, 0, 0}
)

// synthPortal answers a Bind of a transaction-control statement the router
// handles itself; the portal's Execute gets CommandComplete with tag.
// noTxnMark in synthValue (without synthRow) marks a COMMIT or ROLLBACK
// portal bound outside a transaction: its Execute sends the server's
// WARNING 25P01 before the tag.
const noTxnMark = "\x00no transaction"

// inTxnMark marks a BEGIN portal bound while a BEGIN is deferred: its
// Execute sends the server's WARNING 25001 before the tag.
const inTxnMark = "\x00in transaction"

// noSavepointMark, followed by its name, marks a ROLLBACK TO portal of an
// aborted block no server holds: its Execute fails with 3B001.
const noSavepointMark = "\x00no savepoint "

// synthRan in synthValue marks a synthesized portal that has run.
const synthRan = "\x00ran"

// beginTag is the command tag PostgreSQL gives the transaction start q:
// START TRANSACTION or BEGIN.
func beginTag(q string) string {
	for {
		q = strings.TrimLeft(q, " \t\r\n\v\f")
		switch {
		case strings.HasPrefix(q, "--"):
			i := strings.IndexAny(q, "\r\n")
			if i < 0 {
				return "BEGIN"
			}
			q = q[i:]
		case strings.HasPrefix(q, "/*"):
			i := strings.Index(q, "*/")
			if i < 0 {
				return "BEGIN"
			}
			q = q[i+2:]
		default:
			if len(q) >= 5 && strings.EqualFold(q[:5], "start") {
				return "START TRANSACTION"
			}
			return "BEGIN"
		}
	}
}

// bindParamCount returns the number of parameters a Bind's Rest (after
// the portal and statement names) supplies, or -1 when it is malformed.
func bindParamCount(rest []byte) int {
	if len(rest) < 2 {
		return -1
	}
	nf := int(binary.BigEndian.Uint16(rest))
	if len(rest) < 4+2*nf {
		return -1
	}
	return int(binary.BigEndian.Uint16(rest[2+2*nf:]))
}

func (ss *session) synthPortal(portal []byte, tag string) {
	ss.synthName, ss.synthTag, ss.synthRow, ss.synthValue = string(portal), tag, false, ""
	ss.push(expect{kind: eSynth, synth: bindComplete})
}

// route attaches the backend a prepared statement runs on (or, for a
// Describe, one that can describe it).
func (ss *session) route(def *stmtDef, describe bool) *wire.Error {
	if describe {
		// Describing must not open the deferred transaction for a tenant
		// that the statement (SET LOCAL, set_config) may change. A
		// statement that runs for a known tenant opens it, as its Bind
		// would: the Bind that follows in the same pipeline (postgres.js)
		// must find that tenant's backend, the tenant's own tables are
		// described (not shard 0's), and a statement that fails to parse
		// fails the transaction (not before its BEGIN, on a session
		// mode backend).
		keepDeferred := def.info.op == opSetConfig || (ss.pendingBegin != "" && (def.info.op != opNone || ss.pickTenant(&def.info) == ""))
		if ss.be != nil && (ss.pendingBegin == "" || keepDeferred) {
			return nil
		}
		if keepDeferred {
			return ss.ensureBackend(descTenant)
		}
	}
	tenant := ss.pickTenant(&def.info)
	if def.info.kind == kUnlisten && !def.info.multi && ss.listening && ss.be != nil {
		tenant = ss.beTenant // the backend that listens, whichever tenant is selected (as by Query)
	}
	if tenant == "" {
		if ss.be != nil && ss.status != 'I' {
			return nil
		}
		if def.noShard == 0 {
			def.noShard, def.noShardErr = 2, nil
			if ok, e := ss.noShard(&def.info, def.query); ok {
				def.noShard = 1
			} else {
				def.noShardErr = e
			}
		}
		switch {
		case def.noShard == 1:
			tenant = anyTenant
		case describe:
			tenant = descTenant
		default:
			return def.noShardErr
		}
	}
	return ss.ensureBackend(tenant)
}

func (ss *session) onDescribe(body []byte) *wire.Error {
	kind, name, err := wire.DecodeTarget(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	if kind == 'P' {
		if ss.synthTag != "" && name == ss.synthName {
			if ss.synthRow {
				ss.pushSynth(wire.AppendTextRowDescriptionFormat(ss.synthFree, "set_config", ss.synthFormat))
			} else {
				ss.push(expect{kind: eSynth, synth: wire.NoData})
			}
			return nil
		}
		if name == "" && ss.beginPortal && ss.localStatus() != 'I' {
			// A transaction start's, kept by a server until its block
			// ends, with no row description (also in an aborted block):
			// the router may have answered it (a deferred BEGIN's portal
			// is gone at Sync), or may hold no backend now.
			ss.push(expect{kind: eSynth, synth: wire.NoData})
			return nil
		}
		if e := ss.beginForHeldPortal(name != ""); e != nil {
			return e
		}
		if ss.be == nil || (ss.pendingBegin != "" && !ss.boundDeferred) {
			if ss.failed {
				return abortedError() // as the server answers in an aborted block
			}
			return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", name)}
		}
		if name == "" {
			ss.closeOwnUnnamed()
		}
		ss.be.W.WriteFrame(wire.MsgDescribe, body)
		ss.push(expect{kind: eDescP})
		return nil
	}
	def, werr := ss.lookup([]byte(name))
	if werr != nil {
		return werr
	}
	if ss.failed && ss.be == nil {
		return abortedError()
	}
	if def.info.plainSetConfig {
		ss.push(expect{kind: eSynth, synth: setConfigParams(def)})
		ss.pushSynth(wire.AppendTextRowDescription(ss.synthFree, "set_config"))
		return nil
	}
	if k := def.info.kind; (k == kBegin || k == kCommit || k == kRollback) && !def.info.multi && (ss.be == nil || ss.pendingBegin != "") {
		ss.push(expect{kind: eSynth, synth: noParams})
		ss.push(expect{kind: eSynth, synth: wire.NoData})
		return nil
	}
	if e := ss.route(def, true); e != nil {
		return e
	}
	ss.sendParseSetup(def)
	if e := ss.ensurePrepared(def); e != nil {
		if e == skipRest {
			return nil
		}
		if def.stale && len(def.params) > 0 {
			// A server describes the parameters first (see stale.go).
			ss.push(expect{kind: eSynth, synth: def.params})
		}
		return e
	}
	server := ss.serverStmt(def)
	ss.out = wire.AppendTarget(ss.out[:0], 'S', server)
	ss.be.W.WriteFrame(wire.MsgDescribe, ss.out)
	ss.push(expect{kind: eDescS, name: server, stmt: def})
	return nil
}

func (ss *session) onExecute(body []byte) *wire.Error {
	if n := len(ss.synthName); ss.synthTag != "" && len(body) > n && string(body[:n]) == ss.synthName && body[n] == 0 {
		if ss.synthValue == synthRan {
			return &wire.Error{Code: "55000", Message: fmt.Sprintf("portal %q cannot be run", ss.synthName)} // as the server words it
		}
		if sp, ok := strings.CutPrefix(ss.synthValue, noSavepointMark); ok {
			return &wire.Error{Code: "3B001", Message: fmt.Sprintf("savepoint %q does not exist", sp)}
		}
		if ss.synthRow {
			ss.pushSynth(wire.AppendTextDataRow(ss.synthFree, ss.synthValue))
		} else if ss.synthValue == noTxnMark {
			ss.pushSynth(wire.AppendError(ss.synthFree, noTxnWarning()))
		} else if ss.synthValue == inTxnMark {
			ss.pushSynth(wire.AppendError(ss.synthFree, &wire.Error{Severity: "WARNING", Code: "25001", Message: "there is already a transaction in progress"}))
		}
		ss.pushSynth(wire.AppendCommandComplete(ss.synthFree, ss.synthTag))
		if ss.synthTag == "ROLLBACK" || ss.synthTag == "COMMIT" {
			ss.failed = false
			ss.synthTag = "" // gone with the transaction it ended
		} else {
			// The portal stays until Sync or the next Bind of its name, as
			// on a server: Describe gives NoData, Execute 55000.
			ss.synthValue = synthRan
		}
		return nil
	}
	if e := ss.beginForHeldPortal(len(body) > 0 && body[0] != 0); e != nil {
		return e
	}
	if ss.be == nil || (ss.pendingBegin != "" && !ss.boundDeferred) {
		// (With BEGIN deferred no portal of the block is on the server:
		// one there would be outside the block, and its error would not
		// abort the block.)
		if ss.failed {
			return abortedError()
		}
		portal, _, _ := strings.Cut(string(body), "\x00")
		return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", portal)} // as the server words it
	}
	var set *setting
	if st := ss.portalSet; st != nil {
		if n := len(ss.portalSetName); len(body) > n && string(body[:n]) == ss.portalSetName && body[n] == 0 {
			set = st
			if len(body) == n+5 && string(body[n+1:]) == "\x00\x00\x00\x00" {
				ss.portalSet = nil
			} // (else with max rows it may stop at PortalSuspended: the Execute that completes it records it)
		}
	}
	var prep []string
	if n := len(ss.portalPrepName); ss.portalPrep != nil && len(body) > n && string(body[:n]) == ss.portalPrepName && body[n] == 0 {
		prep, ss.portalPrep = ss.portalPrep, nil
	}
	unlisten := false
	if n := len(ss.unlistenPortal); ss.unlistenBound && len(body) > n && string(body[:n]) == ss.unlistenPortal && body[n] == 0 {
		unlisten, ss.unlistenBound = true, false
	}
	if len(body) > 0 && body[0] == 0 {
		ss.closeOwnUnnamed()
	}
	ss.be.W.WriteFrame(wire.MsgExecute, body)
	ss.push(expect{kind: eExec, set: set, prep: prep, unlisten: unlisten})
	return nil
}

func (ss *session) onClose(body []byte) *wire.Error {
	kind, name, err := wire.DecodeTarget(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	if kind == 'S' {
		// What the Close changes is undone should the server skip it
		// after an earlier error of the pipeline (see undoSkipped).
		undo := expect{kind: eSynth, synth: wire.CloseComplete, undo: undoClose, stmtName: name}
		if name == "" {
			undo.prev, ss.unnamed = ss.unnamed, nil
		} else if def := ss.stmts[name]; def != nil {
			ss.deallocate(name)
			ss.closeOnServer(def)
			undo.stmt = def
		} else if _, ok := ss.sqlStmts[name]; ok && ss.be != nil {
			// Made with SQL PREPARE: the server closes it, as it would
			// without the router.
			delete(ss.sqlStmts, name)
			ss.be.W.WriteFrame(wire.MsgClose, body)
			undo.kind, undo.synth = eClose, nil
		} else {
			undo.undo = 0 // nothing to undo
		}
		ss.push(undo)
		return nil
	}
	if ss.portalSet != nil && name == ss.portalSetName {
		ss.portalSet = nil
	}
	var undo uint8
	if name == "" && ss.beginPortal {
		ss.beginPortal, undo = false, undoBeginPortal // kept should the server skip the Close
	}
	if ss.be == nil || (ss.synthTag != "" && name == ss.synthName) {
		if name == ss.synthName {
			ss.synthTag = ""
		}
		ss.push(expect{kind: eSynth, synth: wire.CloseComplete, undo: undo})
		return nil
	}
	ss.be.W.WriteFrame(wire.MsgClose, body)
	ss.push(expect{kind: eClose, undo: undo})
	return nil
}

func (ss *session) onSync([]byte) *wire.Error {
	ss.skipToSync = false
	ss.portalSet, ss.portalPrep, ss.unlistenBound = nil, nil, false
	ss.synthTag, ss.synthRow = "", false
	if ss.be != nil {
		ss.be.W.Write(wire.SyncMsg)
		ss.push(expect{kind: eSync})
	} else {
		ss.push(expect{kind: eSynthRFQ})
	}
	// A setup sent with the transaction just ended is rolled back with it:
	// learn its fate before anything else is sent on the backend.
	if ss.cr.Buffered() == 0 || ss.syncs > 16 || ss.setupOpen || ss.localOpen || ss.resetDue() || ss.unnamedDoubt {
		if err := ss.drain(false); err != nil {
			return ss.clientFailed(err)
		}
		ss.unnamedDoubt = false // the Bind's answer is in (ownUnnamed)
	}
	return nil
}
