package router

import (
	"strings"

	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// resetup queues the setup again on the attached backend when a rolled
// back transaction took it away (the session keeps its backend in session
// mode, or inside a transaction).
func (ss *session) resetup() {
	be := ss.be
	if ss.localOpen || ss.status != 'I' || ss.setupDue || ((be.Schema == ss.wantSchema || ss.ownsPath()) && be.Tenant == ss.wantTenant) || ss.backendPending() {
		return
	}
	ss.chooseSetup(ss.beTenant)
}

// chooseSetup arranges for the attached backend to get wantSchema and
// wantTenant before the client's next statement runs on it: with a deferred
// BEGIN, as transaction-local settings in the same Query (sendPendingBegin);
// otherwise, when only they differ, with the client's statement
// (deferSetup); else (session settings differ) as a Query of its own.
func (ss *session) chooseSetup(tenant string) {
	be := ss.be
	switch {
	case be.SessionSig != ss.sig && !ss.midTxn():
		ss.setup(be, ss.wantSchema, ss.wantTenant)
	case ss.pendingBegin != "" && tenant != anyTenant && tenant != descTenant && ss.srv.cfg.PoolMode == PoolTransaction:
		// Transaction mode only: the backend goes back to the pool when
		// the transaction ends (localOpen makes sure nothing else is sent
		// on it before), so its reverted session values are never used.
		ss.localSetup = be.Schema != ss.wantSchema || be.Tenant != ss.wantTenant || ss.unseen(be)
	case ss.pendingBegin == "":
		ss.deferSetup(be, ss.wantSchema, ss.wantTenant)
	default:
		ss.setup(be, ss.wantSchema, ss.wantTenant)
	}
}

// setupStmt is the statement prepared on every backend connection that
// sets the shard's search_path and the tenant id in one Bind/Execute;
// setupTenantStmt sets the tenant id alone, for a backend already on the
// shard's schema.
const (
	setupStmt       = "pgtenant_setup"
	setupSQL        = "SELECT pg_catalog.set_config('search_path', $1, false), pg_catalog.set_config('pgtenant.tenant_id', $2, false)"
	setupTenantStmt = "pgtenant_setup_tenant"
	setupTenantSQL  = "SELECT pg_catalog.set_config('pgtenant.tenant_id', $1, false)"
)

// setupTypes declares setupSQL's two parameters as text; setupTenantTypes
// setupTenantSQL's one.
var (
	setupTypes       = []byte{0, 2, 0, 0, 0, 25, 0, 0, 0, 25}
	setupTenantTypes = []byte{0, 1, 0, 0, 0, 25}
)

// deferSetup records that be needs search_path = schema and tenant id
// tenant before the client's first statement on it, unless it has them.
//
// In transaction mode the settings are sent transaction-local
// (setupLocal): the backend's session values, and so be.Schema and
// be.Tenant, stay as they are. Postgres re-analyses a prepared statement
// whenever the search_path differs from the one it was planned with; a
// session search_path that changed with every transaction made the setup
// statement itself be re-planned each time (about 10 µs of server CPU per
// transaction), while a local one reverts before the next Bind.
//
// A client that owns its search_path (ownsPath) gets the tenant id only.
//
// In transaction mode what the router last set on a backend is not proof
// of what the backend has when another client held it since: that client
// may have run a function that set search_path or pgtenant.tenant_id for
// the session, which the router cannot see. The server reports a
// search_path change from PostgreSQL 18 on (see the MsgParamStatus case of
// drain), a custom setting's never. So a backend another client held last
// gets the tenant id again, and the path too unless its server reports it.
func (ss *session) deferSetup(be *pool.Conn, schema, tenant string) {
	unseen := ss.unseen(be)
	pathDue := !ss.ownsPath() && ss.pathDue(be, schema, tenant)
	if !pathDue && be.Tenant == tenant && !unseen {
		return
	}
	ss.setupDue = true
	ss.setupPath = ""
	if pathDue {
		ss.setupPath = ss.srv.searchPath(schema)
	}
	ss.setupSchema, ss.setupTenant = schema, tenant
	ss.setupLocal = ss.srv.cfg.PoolMode == PoolTransaction
	if !ss.setupLocal {
		if pathDue {
			be.Schema = schema
		}
		be.Tenant = tenant
	}
}

// unseen reports whether be's session settings may not be what the router
// last set on them (transaction mode): another client held it last, and may
// have run a function that set them for the session. (A transaction of this
// client's for a tenant other than the session settings' makes them unknown
// when it ends: see releaseBackend.)
func (ss *session) unseen(be *pool.Conn) bool {
	return ss.srv.cfg.PoolMode == PoolTransaction && be.LastClient != ss.id
}

// pathDue reports whether be needs schema's search_path for tenant: it has
// another, or one the router cannot vouch for when its server does not
// report search_path: another client held it last (unseen), or a function
// run for the backend's previous tenant may have set it for the session (a
// client serving its tenants in turn, either pool mode).
func (ss *session) pathDue(be *pool.Conn, schema, tenant string) bool {
	return be.Schema != schema || ((ss.unseen(be) || be.Tenant != tenant) && !be.ReportsPath)
}

// sendSetup sends a setup deferred by ensureBackend before statement info
// runs: with the statement when it can share a transaction with it (DML
// being bound), when a transaction with local settings is already open, or part way
// through a pipeline (setupEach); else as a Query of its own. With
// setupEach, the settings are sent again when the backend's session values
// are not the session's. Before a Parse or Describe (bind false) of DML the
// setup goes with a Sync of the router's own (syncSetup), or as a Query of
// its own: the statement the client binds next may be another one, which
// must not find an implicit transaction block the router opened (VACUUM
// refuses one, and from PostgreSQL 18 on a procedure that commits fails in
// one: see sendQuerySetup). Nothing is sent before a transaction control
// statement, which reads no table, or in an aborted transaction, where the
// server would refuse the setup and skip the client's ROLLBACK with it: the
// setup waits for the next statement. A Parse or Describe (bind false)
// sends none in an aborted transaction; a Bind or Query only once a
// statement that ends it, or a ROLLBACK TO, was bound (txnEndBound,
// abortLeft).
func (ss *session) sendSetup(info *stmtInfo, bind bool) {
	if !ss.setupWanted(info, bind) {
		return
	}
	switch {
	case (info.dml && bind) || (ss.setupLocal && ss.localOpen) || ss.setupEach:
		ss.writeSetup()
	case info.dml && !ss.unsynced:
		ss.syncSetup()
	default:
		ss.flushSetup()
	}
}

// syncSetup sends the deferred setup before a Parse or Describe of DML as
// Bind/Execute of the router's prepared session setup statement and a Sync
// of the router's own, its ReadyForQuery swallowed: the server parses no
// setup text (flushSetup's Query cost pgbench -M extended ~20% more CPU per
// transaction), and the Sync ends the implicit transaction, so the client's
// next statement, whichever it binds, finds no block the router opened.
// Transaction-local settings would end with that Sync: the settings go for
// the session, as flushSetup's do, and count as the backend's once the Sync
// answers 'I' (setupOpen). Callers use it only when no message of the
// client's waits for a Sync on the backend (unsynced): the router's Sync
// would end the client's implicit transaction, or the skipping after its
// error.
func (ss *session) syncSetup() {
	if !ss.setupDue && !ss.cleanDue {
		return
	}
	ss.writeClean()
	if ss.setupDue {
		ss.setupDue = false
		if ss.setupLocal {
			// Sent as session settings after all.
			ss.be.Schema, ss.be.Tenant = ss.setupSchema, ss.setupTenant
		}
		if ss.setupPath != "" {
			ss.bindPrepared(setupStmt, setupSQL, setupTypes, []string{ss.setupPath, ss.setupTenant})
		} else {
			ss.bindPrepared(setupTenantStmt, setupTenantSQL, setupTenantTypes, []string{ss.setupTenant})
		}
		ss.setupOpen = true
	}
	ss.be.W.Write(wire.SyncMsg)
	ss.push(expect{kind: eSync, swallow: true})
}

// sendQuerySetup is sendSetup for a simple Query that may run outside a
// transaction block: the setup always goes as a Query of its own
// (flushSetup, session settings), never as Bind/Execute without a Sync
// before the client's Query. From PostgreSQL 18 on (commit 24da0e7), a completed Execute not
// followed by a Sync makes the next statement open an implicit transaction
// block; a one-statement Query run in it does not commit it (ReadyForQuery
// 'T'), and a Sync after that Query leaves the server's transaction state
// broken ("StartTransactionCommand: unexpected state STARTED", XX000). The
// client's autocommit statement was acknowledged yet left uncommitted, and
// rolled back when the backend was closed: acknowledged writes lost.
//
// When answers are still due (a pipeline), the Query may run inside a
// transaction block that a later ROLLBACK ends, taking these session
// settings with it: the backend's values are then taken as unknown, so the
// next statement gets them again.
func (ss *session) sendQuerySetup(info *stmtInfo) {
	if !ss.setupWanted(info, true) {
		return
	}
	due, sure := ss.setupDue, ss.status == 'I' && !ss.backendPending()
	ss.flushSetup()
	if due && !sure {
		ss.be.Schema, ss.be.Tenant = "\x00", "\x00"
	}
}

// setupWanted reports whether the deferred setup may go before statement
// info (see sendSetup), and with setupEach arms it again when the backend's
// session values are not the session's.
func (ss *session) setupWanted(info *stmtInfo, bind bool) bool {
	if (ss.status == 'E' && (!bind || !(ss.txnEndBound || ss.abortLeft))) || (!info.multi && (info.kind == kBegin || info.kind == kCommit || info.kind == kRollback ||
		info.kind == kSavepoint || info.rollbackTo || info.endsTxn)) {
		return false
	}
	if be := ss.be; ss.setupEach && be != nil && !ss.setupDue && ((be.Schema != ss.wantSchema && !ss.ownsPath()) || be.Tenant != ss.wantTenant) {
		ss.setupDue = true
		ss.setupPath = ""
		if be.Schema != ss.wantSchema && !ss.ownsPath() {
			ss.setupPath = ss.srv.searchPath(ss.wantSchema)
		}
		ss.setupSchema, ss.setupTenant = ss.wantSchema, ss.wantTenant
		ss.setupLocal = ss.srv.cfg.PoolMode == PoolTransaction
		if !ss.setupLocal {
			// A statement bound before may still undo it when it runs:
			// the backend's values stay unknown until the next setup
			// outside such a pipeline.
			be.Schema, be.Tenant = "\x00", "\x00"
		}
	}
	return true
}

// markSetupEach sets setupEach, to be cleared only by the ReadyForQuery of
// a Sync sent after this point.
func (ss *session) markSetupEach() {
	ss.setupEach, ss.pipeMarkAt = true, ss.syncsPushed
}

// noteEnding looks at a statement about to be bound (or run as a simple
// Query) for what may take the backend's settings away part way through
// the pipeline, and makes every statement after it get them again
// (setupEach):
//   - one that ends the transaction (COMMIT, ROLLBACK, PREPARE TRANSACTION,
//     also with AND CHAIN): transaction-local settings revert;
//   - any statement that is not DML in an implicit transaction (a
//     procedure that commits or rolls back), or ROLLBACK TO after a session
//     setup in this transaction: a session setup may be undone, so the
//     backend's values become unknown;
//   - RESET ALL, set_config of another setting and the like (see
//     noteServerState).
//
// Before CALL or DO in an implicit transaction holding local settings, the
// backend also gets the settings for the session, so that what a
// procedure runs after its own COMMIT is on the tenant's shard. (After its
// own ROLLBACK the backend's committed session values apply: a procedure
// that rolls back and then reads tables, called in a pipeline after other
// statements, is the one case not covered.)
func (ss *session) noteEnding(info *stmtInfo) {
	if info.kind == kBegin && !info.multi {
		ss.txnEndBound = false // a new transaction, bound to its first statement's tenant
	}
	if info.rollbackTo {
		ss.abortLeft, ss.abortLeftAt = true, ss.syncsPushed
	}
	implicit := ss.status == 'I' || ss.txnEndBound
	if info.rollbackTo && !implicit {
		// Local settings sent at the transaction's start outlive it; only
		// a session setup sent after the savepoint may be undone.
		if ss.setupOpen {
			ss.doubtSetup()
			ss.markSetupEach()
		}
		return
	}
	if !info.endsTxn && (info.dml || !implicit) {
		return
	}
	if info.endsTxn {
		ss.txnEndBound, ss.pipeMarkAt = true, ss.syncsPushed
		ss.localTenant = ""
	}
	ss.markSetupEach()
	if ss.setupOpen {
		ss.doubtSetup() // may be undone
	}
	be := ss.be
	if be == nil || !info.callsProc || !implicit {
		return
	}
	if ss.localOpen && (be.Schema != ss.wantSchema || be.Tenant != ss.wantTenant) {
		ss.bindPrepared(setupStmt, setupSQL, setupTypes, []string{ss.srv.searchPath(ss.wantSchema), ss.wantTenant})
		be.Schema, be.Tenant = "\x00", "\x00" // committed or not, as the procedure decides
	}
}

// writeSetup sends the deferred setup as Bind/Execute of a prepared
// setup statement, without a Sync: it runs in the same implicit transaction as
// the client's statement that follows (one round trip, one ReadyForQuery,
// no statement text to parse). Callers use it only before a single DML
// statement (stmtInfo.dml), which can run inside such a transaction, or
// inside a transaction already open with local settings; before a simple
// Query only inside a transaction block (see sendQuerySetup).
//
// Transaction-local settings (setupLocal) open localOpen: the transaction
// is answered before anything else is sent, and the backend goes back to
// the pool when it ends. Session settings take effect for good only when
// that transaction commits, so setupOpen makes an error or an open
// transaction at the next ReadyForQuery forget them (doubtSetup).
func (ss *session) writeSetup() {
	ss.writeClean()
	if !ss.setupDue {
		return
	}
	ss.setupDue = false
	if ss.setupLocal {
		if ss.setupPath != "" {
			ss.bindPrepared(setupLocalStmt, setupLocalSQL, setupTypes, []string{ss.setupPath, ss.setupTenant})
		} else {
			ss.bindPrepared(setupLocalTenantStmt, setupLocalTenantSQL, setupTenantTypes, []string{ss.setupTenant})
		}
		ss.localOpen = true
		return
	}
	if ss.setupPath != "" {
		ss.bindPrepared(setupStmt, setupSQL, setupTypes, []string{ss.setupPath, ss.setupTenant})
	} else {
		ss.bindPrepared(setupTenantStmt, setupTenantSQL, setupTenantTypes, []string{ss.setupTenant})
	}
	ss.setupOpen = true
}

// executeUnnamed is Execute of the unnamed portal, all rows.
var executeUnnamed = []byte{wire.MsgExecute, 0, 0, 0, 9, 0, 0, 0, 0, 0}

// closeUnnamedPortal is Close of the unnamed portal.
var closeUnnamedPortal = []byte{wire.MsgClose, 0, 0, 0, 6, 'P', 0}

// flushSetup sends the deferred setup as a simple Query of its own, for
// statements that must not share a transaction with it.
func (ss *session) flushSetup() {
	if !ss.setupDue {
		if ss.cleanDue {
			ss.cleanDue = false
			ss.out = wire.AppendQuery(ss.out[:0], discardTempSQL)
			ss.be.W.Write(ss.out)
			ss.push(expect{kind: eQuery, swallow: true, name: "setup"})
		}
		return
	}
	ss.setupDue = false
	if ss.setupLocal {
		// Sent as session settings after all.
		ss.be.Schema, ss.be.Tenant = ss.setupSchema, ss.setupTenant
	}
	q := "SELECT "
	if ss.cleanDue {
		ss.cleanDue = false
		q = discardTempSQL + ";" + q
	}
	if ss.setupPath != "" {
		q += "pg_catalog.set_config('search_path', " + quoteLiteral(ss.setupPath) + ", false), "
	}
	q += "pg_catalog.set_config('pgtenant.tenant_id', " + quoteLiteral(ss.setupTenant) + ", false)"
	ss.out = wire.AppendQuery(ss.out[:0], q)
	ss.be.W.Write(ss.out)
	ss.push(expect{kind: eQuery, swallow: true, name: "setup"})
}

// doubtSetup forgets what the attached backend's search_path and tenant id
// are when a setup sent with writeSetup may not have been committed.
func (ss *session) doubtSetup() {
	if !ss.setupOpen {
		return
	}
	ss.setupOpen = false
	if be := ss.be; be != nil {
		be.Schema, be.Tenant = "\x00", "\x00"
	}
}

// sameNode reports whether tenant lives on the attached backend's node.
func (ss *session) sameNode(tenant string) bool {
	m := ss.srv.mp.Load()
	if m == nil || len(m.Shards) == 0 {
		return false
	}
	if tenant == anyTenant || tenant == descTenant {
		return m.Shards[0].Node == ss.be.Node()
	}
	loc, e := ss.locate(m, tenant)
	return e == nil && loc.Node.Name == ss.be.Node()
}

// midTxn reports whether the client's statements of a transaction still
// open already ran on the attached backend: an implicit one (messages not
// yet followed by a Sync) or a block the server started. Its session
// settings are then the client's as PostgreSQL would have them (its own
// SETs of the transaction included), and the setup's Query of RESET ALL
// and the session's settings must not be sent: a Query there committed the
// client's implicit transaction part way (a later error no longer rolled
// back its earlier statements) and reset the block's settings. Only the
// shard's path and tenant id are set (deferSetup); the settings, unknown,
// are set again after the transaction.
func (ss *session) midTxn() bool {
	return ss.unsynced || (ss.pendingBegin == "" && ss.inTxn())
}

// setup queues the statements that give be the session's settings, the
// shard's search_path and the tenant id, pipelined before the client's
// message. Nothing is sent when the backend already has them.
//
// A client that owns its search_path (ownsPath) has it among its session
// settings, and gets no shard path.
func (ss *session) setup(be *pool.Conn, schema, tenant string) {
	own := ss.ownsPath()
	if be.SessionSig == ss.sig && (be.Schema == schema || own) && be.Tenant == tenant {
		return
	}
	var b strings.Builder
	if ss.cleanDue {
		ss.cleanDue = false
		b.WriteString(discardTempSQL + ";")
	}
	if be.SessionSig != ss.sig {
		if be.SessionSig != "" {
			b.WriteString("RESET ALL;")
		}
		b.WriteString(ss.sig)
		be.SessionSig = ss.sig
		be.Schema, be.Tenant = "\x00", "\x00"
		// The client's settings go as a Query of their own: should one
		// fail (a value the node refuses: a text search configuration
		// another node has), the shard's path and tenant id below are set
		// all the same. In one Query, the error rolled them back and the
		// client's statement ran on the backend's previous shard.
		ss.out = wire.AppendQuery(ss.out[:0], b.String())
		be.W.Write(ss.out)
		ss.push(expect{kind: eQuery, swallow: true, name: "setup"})
		b.Reset()
	}
	// One statement for both settings: cheaper for the server than two SETs.
	sep := "SELECT "
	if be.Schema != schema && !own {
		b.WriteString(sep)
		b.WriteString("pg_catalog.set_config('search_path', ")
		b.WriteString(quoteLiteral(ss.srv.searchPath(schema)))
		b.WriteString(", false)")
		be.Schema = schema
		sep = ", "
	}
	if be.Tenant != tenant {
		b.WriteString(sep)
		b.WriteString("pg_catalog.set_config('pgtenant.tenant_id', ")
		b.WriteString(quoteLiteral(tenant))
		b.WriteString(", false)")
		be.Tenant = tenant
	}
	ss.out = wire.AppendQuery(ss.out[:0], b.String())
	be.W.Write(ss.out)
	ss.push(expect{kind: eQuery, swallow: true, name: "setup"})
}
