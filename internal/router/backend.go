package router

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// anyTenant binds a backend used for statements that need no shard.
const anyTenant = "\x00any"

// descTenant binds a backend that describes statements for a client with
// no tenant yet: shard 0's schema, since every shard has the same tables.
const descTenant = "\x00describe"

// anySchema is the search_path of backends serving statements without a tenant.
const anySchema = "pg_catalog"

// inTxn reports whether the client is inside a transaction block.
func (ss *session) inTxn() bool {
	if ss.pendingBegin != "" || ss.failed {
		return true
	}
	return ss.be != nil && ss.status != 'I'
}

// canDefer reports whether a BEGIN can be answered by the router and sent
// later with the first statement that names a tenant: no transaction is
// open on a backend.
func (ss *session) canDefer() bool {
	return ss.be == nil || (ss.status == 'I' && !ss.backendPending())
}

// sendPendingBegin queues the deferred BEGIN on the attached backend.
func (ss *session) sendPendingBegin(tenant string) {
	if ss.pendingBegin == "" || tenant == anyTenant || tenant == descTenant {
		return
	}
	q := ss.pendingBegin
	if isPlainBegin(q) {
		ss.writeBegin()
		return
	}
	if ss.cleanDue {
		ss.cleanDue = false
		q += "\n;" + discardTempSQL
	}
	if ss.localSetup {
		// The shard's search_path and the tenant id for this transaction
		// only, in the BEGIN's round trip: the backend's session values
		// (be.Schema, be.Tenant) come back when it ends.
		ss.localSetup, ss.localOpen = false, false
		ss.localOpen = true
		be := ss.be
		b := []byte(q)
		if ss.pathDue(be, ss.wantSchema, ss.wantTenant) {
			b = appendSetLocalPath(append(b, "\n;"...), ss.srv.setPathValue(ss.wantSchema))
		}
		q = string(appendSetLocalTenant(append(b, "\n;"...), ss.wantTenant))
	}
	ss.out = wire.AppendQuery(ss.out[:0], q)
	ss.be.W.Write(ss.out)
	ss.push(expect{kind: eQuery, swallow: true})
	ss.pendingBegin = ""
	ss.status = 'T'
}

// isPlainBegin reports whether q is BEGIN or START TRANSACTION without
// options, which writeBegin can send as a prepared statement.
func isPlainBegin(q string) bool {
	q = strings.TrimSpace(q)
	q = strings.TrimSpace(strings.TrimSuffix(q, ";"))
	switch {
	case strings.EqualFold(q, "BEGIN"), strings.EqualFold(q, "START TRANSACTION"):
		return true
	}
	return false
}

// Prepared on a backend on first use by writeBegin: the transaction start and
// the transaction-local setup (compare setupStmt).
const (
	beginStmt            = "pgtenant_begin"
	setupLocalStmt       = "pgtenant_setup_local"
	setupLocalSQL        = "SELECT pg_catalog.set_config('search_path', $1, true), pg_catalog.set_config('pgtenant.tenant_id', $2, true)"
	setupLocalTenantStmt = "pgtenant_setup_local_tenant"
	setupLocalTenantSQL  = "SELECT pg_catalog.set_config('pgtenant.tenant_id', $1, true)"
)

// writeBegin sends the deferred plain BEGIN, and the shard's search_path and
// tenant id for this transaction when the backend lacks them, as
// Bind/Execute of statements prepared once per backend, and a Sync: the
// server parses and plans nothing per transaction, and the client's
// statement that follows shares the round trip.
func (ss *session) writeBegin() {
	be := ss.be
	ss.bindPrepared(beginStmt, "BEGIN", nil, nil)
	ss.writeClean()
	if ss.localSetup {
		ss.localSetup = false
		ss.localOpen = true
		var path string
		if ss.pathDue(be, ss.wantSchema, ss.wantTenant) {
			path = ss.srv.searchPath(ss.wantSchema)
		}
		if path != "" {
			ss.bindPrepared(setupLocalStmt, setupLocalSQL, setupTypes, []string{path, ss.wantTenant})
		} else {
			ss.bindPrepared(setupLocalTenantStmt, setupLocalTenantSQL, setupTenantTypes, []string{ss.wantTenant})
		}
	}
	// A Sync of their own: the transaction block stays open across it, and
	// should one of them fail, the server skips only up to here, not the
	// client's messages that follow.
	be.W.Write(wire.SyncMsg)
	ss.push(expect{kind: eSync, swallow: true})
	ss.pendingBegin = ""
	ss.status = 'T'
}

// ownPortal is the portal the router's own statements run in while the
// client may have bound the unnamed one (clientPortal).
const ownPortal = "pgtenant_setup"

// bindPrepared queues, for one of the router's own statements, Parse (on
// first use on this backend), Bind of the unnamed portal with text
// parameters and text results, and Execute, their answers swallowed. When
// the client may have bound the unnamed portal and not yet executed it,
// the statement runs in ownPortal, closed right after.
func (ss *session) bindPrepared(name, sql string, types []byte, params []string) {
	be := ss.be
	if _, ok := be.Prepared[name]; !ok {
		be.Prepared[name] = struct{}{}
		if types == nil {
			types = []byte{0, 0}
		}
		ss.closeFirst(name)
		ss.out = wire.AppendParse(ss.out[:0], name, sql, types)
		be.W.WriteFrame(wire.MsgParse, ss.out)
		ss.push(expect{kind: eParse, swallow: true, name: name, setup: true})
	}
	portal := ""
	if ss.clientPortal {
		portal = ownPortal
	}
	b := append(ss.out[:0], portal...)
	b = append(b, 0)
	b = append(b, name...)
	b = append(b, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(params)))
	for _, v := range params {
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	b = append(b, 0, 0)
	ss.out = b
	be.W.WriteFrame(wire.MsgBind, b)
	ss.push(expect{kind: eBind, swallow: true, setup: true, name: name})
	if portal == "" {
		be.W.Write(executeUnnamed)
		ss.push(expect{kind: eExec, swallow: true, setup: true})
		return
	}
	b = append(ss.out[:0], portal...)
	b = append(b, 0, 0, 0, 0, 0)
	ss.out = b
	be.W.WriteFrame(wire.MsgExecute, b)
	ss.push(expect{kind: eExec, swallow: true, setup: true})
	ss.out = wire.AppendTarget(ss.out[:0], 'P', portal)
	be.W.WriteFrame(wire.MsgClose, ss.out)
	ss.push(expect{kind: eClose, swallow: true, setup: true})
}

// localStatus is the ReadyForQuery status when no backend is attached.
func (ss *session) localStatus() byte {
	switch {
	case ss.failed:
		return 'E'
	case ss.pendingBegin != "":
		return 'T'
	case ss.be != nil:
		return ss.status
	}
	return 'I'
}

// pickTenant returns the tenant a statement runs for: its hint, else SET
// LOCAL, else the session's.
func (ss *session) pickTenant(info *stmtInfo) string {
	switch {
	case info.hasHint:
		return info.hint
	case ss.localTenant != "":
		return ss.localTenant
	case ss.be != nil && ss.status != 'I' && !ss.txnEndBound && ss.beTenant != anyTenant && ss.beTenant != descTenant:
		return ss.beTenant
	}
	return ss.tenant
}

func noTenantError() *wire.Error {
	return &wire.Error{Code: "3D000", Message: "no tenant selected for this statement",
		Hint: "Name the tenant for the transaction: a /* tenant: id */ comment, SET LOCAL pgtenant.tenant = 'id' after BEGIN, or the connection option -c pgtenant.tenant=id."}
}

// noShardError is noTenantError for a statement that the parser found
// needs a shard, saying why.
func noShardError(reason string) *wire.Error {
	e := noTenantError()
	e.Detail = "Without a tenant only statements that read just pg_catalog and information_schema run (this one needs a shard: " + reason + ")."
	return e
}

// noShard reports whether a statement without a tenant can run on any
// node. SET, RESET, SHOW and the like are decided by the lexer; anything
// else is parsed (sqlscan, cached by text): it may if it reads only the
// system catalogs. Statements that have a tenant never get here.
func (ss *session) noShard(info *stmtInfo, sql string) (bool, *wire.Error) {
	if info.noShard && ((info.kind != kSelect && info.kind != kValues) || info.op != opNone || info.callsSetConfig) {
		return true, nil
	}
	if d := ss.srv.scan.Decide(sql); !d.AnyNode {
		e := noShardError(d.Reason)
		if info.ddl {
			// Naming a tenant would change that tenant's shard only.
			e.Hint = ddlHint
		}
		return false, e
	}
	return true, nil
}

func unknownTenantError(t string) *wire.Error {
	return &wire.Error{Code: "42704", Message: fmt.Sprintf("tenant %q is unknown", t),
		Hint: fmt.Sprintf("Register it with `pgtenant tenant add %s`.", t)}
}

func checkTenantID(t string) *wire.Error {
	if err := placement.ValidateTenantID(t); err != nil {
		return &wire.Error{Code: "22023", Message: fmt.Sprintf("invalid tenant id: %v", err)}
	}
	return nil
}

// ensureBackend attaches a backend for tenant (anyTenant for statements
// that need no shard) and queues what must run on it first.
func (ss *session) ensureBackend(tenant string) *wire.Error {
	if e := ss.restrictTenant(&tenant); e != nil {
		return e
	}
	if ss.be != nil {
		if ss.beTenant == tenant && !ss.be.Broken() {
			ss.resetup()
			ss.sendPendingBegin(tenant)
			return nil
		}
		if err := ss.drainSyncs(); err != nil {
			return ss.clientFailed(err)
		}
	}
	var keep *pool.Conn // session mode: the attached backend, if it can serve tenant too
	if ss.be != nil && ss.be.Broken() && (ss.status != 'I' || ss.srv.cfg.PoolMode == PoolSession || ss.unsynced) && !ss.backendPending() {
		// Cut (fence, node failure) while the client was idle in a
		// transaction, a session or an unsynced pipeline: the transaction
		// is lost; say so rather than run the statement elsewhere (or
		// refuse it as another tenant's, 25001, after that error).
		ss.srv.log.Warn("backend connection lost while the client was idle", "session", ss.id, "node", ss.be.Node(), "reason", ss.be.KillReason())
		werr := killError(ss.be, nil)
		wasTxn := ss.status != 'I'
		ss.releaseBackend()
		ss.status = 'I'
		if wasTxn {
			ss.failed = true
		}
		return werr
	}
	if ss.be != nil {
		if ss.beTenant == tenant && !ss.be.Broken() {
			ss.resetup()
			ss.sendPendingBegin(tenant)
			return nil
		}
		if ss.backendPending() || ss.unsynced {
			return &wire.Error{Code: "25001", Message: fmt.Sprintf("this pipeline is bound to tenant %q; it cannot also run statements for tenant %q", ss.beTenant, tenant),
				Hint: "Send Sync before switching tenants: one implicit transaction runs on one shard."}
		}
		if ss.status != 'I' && !ss.be.Broken() {
			if tenant == anyTenant || tenant == descTenant {
				return nil // harmless statement inside the transaction
			}
			return &wire.Error{Code: "25001", Message: fmt.Sprintf("this transaction is bound to tenant %q; it cannot also run statements for tenant %q", ss.beTenant, tenant),
				Hint: "COMMIT or ROLLBACK before switching tenants: one transaction runs on one shard."}
		}
		if ss.listening {
			return &wire.Error{Code: "0A000", Message: "cannot switch tenant while listening for notifications", Hint: "UNLISTEN * first."}
		}
		switch {
		case ss.srv.cfg.PoolMode != PoolSession:
			ss.releaseBackend()
		case !ss.be.Broken() && ss.sameNode(tenant):
			// Keep the session's backend; only the gate and setup change.
			keep = ss.be
			defer func() {
				if keep != nil && ss.be == nil {
					// Routing failed: the session keeps its backend.
					ss.be = keep
					ss.beCur.Store(keep)
				}
			}()
			if ss.beGate != nil {
				ss.leaveGate(ss.beGate)
			}
			ss.be, ss.beGate = nil, nil
			ss.beCur.Store(nil)
		default:
			ss.end() // another node: reset this backend and give it back
		}
	}
	if tenant != anyTenant && tenant != descTenant {
		if e := checkTenantID(tenant); e != nil {
			return e
		}
	}
	m := ss.srv.mp.Load()
	if m == nil || len(m.Shards) == 0 {
		return &wire.Error{Code: "08006", Message: "the router has no placement map yet"}
	}
	var node placement.Node
	var schema string
	var g *gate
	var entry *inflight
	if tenant == anyTenant || tenant == descTenant {
		n, ok := m.Nodes[m.Shards[0].Node]
		if !ok {
			return &wire.Error{Code: "08006", Message: "the placement map has no node for shard 0"}
		}
		node, schema = n, anySchema
		if tenant == descTenant {
			schema = m.Shards[0].Schema
			if schema == "" {
				schema = placement.SchemaName(0)
			}
		}
	} else {
		var holdStart time.Time
		for {
			loc, e := ss.locate(m, tenant)
			if e != nil {
				return e
			}
			if ch := ss.srv.tenantHold(m, tenant); ch != nil {
				if holdStart.IsZero() {
					holdStart = time.Now()
				}
				if e := ss.hold(ch, loc.Shard.ID, holdStart); e != nil {
					return e
				}
				m = ss.srv.mp.Load()
				continue
			}
			gs := ss.srv.gatesFor(len(m.Shards))
			g = gs[loc.Shard.ID]
			g.mu.Lock()
			if g.fenced {
				ch := g.release
				g.mu.Unlock()
				if holdStart.IsZero() {
					holdStart = time.Now()
				}
				if e := ss.hold(ch, loc.Shard.ID, holdStart); e != nil {
					return e
				}
				m = ss.srv.mp.Load()
				continue
			}
			entry = &ss.entry
			*entry = inflight{tenant: tenant}
			g.inflight[ss] = entry
			g.mu.Unlock()
			if cur := ss.srv.mp.Load(); cur != m {
				ss.leaveGate(g)
				m = cur
				continue
			}
			node, schema = loc.Node, loc.Shard.Schema
			if schema == "" {
				schema = placement.SchemaName(loc.Shard.ID)
			}
			break
		}
	}
	if keep != nil && keep.Node() != node.Name {
		// The map changed while we waited: give the old backend up.
		ss.be = keep
		ss.end()
		keep = nil
	}
	p := ss.poolFor(node, ss.access.Role)
	t0 := time.Now()
	be, err := keep, error(nil)
	cancelled := false
	if be == nil {
		be, err = p.Acquire(ss.acquireCtx())
		cancelled = ss.acquireDone()
	}
	if err != nil {
		if g != nil {
			ss.leaveGate(g)
		}
		if cancelled && errors.Is(err, context.Canceled) {
			return &wire.Error{Code: "57014", Message: "canceling statement due to user request"}
		}
		if errors.Is(err, pool.ErrWaitTimeout) {
			return &wire.Error{Code: "53300", Message: fmt.Sprintf("no backend connection to node %q became free in time", node.Name),
				Hint: "The node's pool is full: retry, or raise the router's pool size or wait timeout (pgtenant router --pool-size, --pool-wait-timeout)."}
		}
		// The error names the node's host, port and user: it goes to the
		// router's log, never to the client.
		ss.srv.log.Warn("backend connection unavailable", "session", ss.id, "node", node.Name, "tenant", tenant, "err", err)
		if code := pool.RefusedCode(err); code != "" {
			return nodeRefusedError(node.Name, code)
		}
		return nodeUnreachableError(node.Name)
	}
	ss.nodeMetrics(node.Name).acquire.Observe(time.Since(t0).Seconds())
	if g != nil {
		g.mu.Lock()
		cut := entry.cut
		entry.be = be
		g.mu.Unlock()
		if cut {
			ss.leaveGate(g)
			if keep != nil {
				be.MarkBroken()
				keep = nil
			}
			be.Release()
			return &wire.Error{Code: "40001", Message: "the tenant's shard is being moved; retry the transaction"}
		}
	}
	ss.srv.learnParams(be)
	ss.be, ss.beTenant, ss.beGate, ss.status = be, tenant, g, 'I'
	if keep == nil {
		ss.beStart = time.Now()
	}
	ss.beCur.Store(be)
	tid := tenant
	if tenant == anyTenant || tenant == descTenant {
		tid = ""
	}
	ss.wantSchema, ss.wantTenant = schema, tid
	ss.wantTag = ss.srv.schemaTag(schema)
	if keep == nil && ss.srv.cfg.PoolMode == PoolTransaction {
		ss.cleanDue = true
	}
	ss.trimPrepared()
	ss.chooseSetup(tenant)
	ss.sendPendingBegin(tenant)
	return nil
}

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
	case be.SessionSig != ss.sig:
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

// hold waits for a fenced shard to be released.
func (ss *session) hold(ch chan struct{}, shard int, since time.Time) *wire.Error {
	m := ss.srv.m
	m.Held.Inc()
	defer m.Held.Dec()
	left := ss.srv.cfg.HoldTimeout - time.Since(since)
	if left <= 0 {
		left = time.Millisecond
	}
	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-ss.cancelCh: // a cancel that arrived before the hold
	default:
	}
	select {
	case <-ch:
		return nil
	case <-ss.cancelCh:
		return &wire.Error{Code: "57014", Message: "canceling statement due to user request"}
	case <-t.C:
		m.HoldTimeouts.Inc()
		return &wire.Error{Code: "40001", Message: fmt.Sprintf("shard %d is being moved and was not released within %s", shard, ss.srv.cfg.HoldTimeout),
			Hint: "Retry the transaction."}
	case <-ss.ctx.Done():
		return &wire.Error{Severity: "FATAL", Code: "57P01", Message: "the router is shutting down"}
	}
}

func (ss *session) leaveGate(g *gate) {
	g.mu.Lock()
	delete(g.inflight, ss)
	fenced := g.fenced
	g.mu.Unlock()
	if fenced { // SetMap may be waiting for the shard to drain
		select {
		case ss.srv.gateLeft <- struct{}{}:
		default:
		}
	}
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

// releaseBackend returns the attached backend to its pool.
func (ss *session) releaseBackend() {
	be := ss.be
	if be == nil {
		return
	}
	if (ss.setupDue && !ss.setupLocal) || ss.setupOpen {
		// Not sent, or not known to be committed.
		be.Schema, be.Tenant = "\x00", "\x00"
		ss.setupDue, ss.setupOpen = false, false
	}
	if ss.unsynced {
		// An implicit transaction is open on it: closing rolls it back.
		be.MarkBroken()
		ss.unsynced = false
	}
	if ss.dropBackend {
		be.MarkBroken() // its prepared statements were changed behind the router's back
		ss.dropBackend = false
	}
	ss.localSetup, ss.localOpen, ss.cleanDue = false, false, false
	ss.setupEach, ss.txnEndBound, ss.clientPortal, ss.abortLeft = false, false, false, false
	ss.txnSets = ss.txnSets[:0]
	ss.sqlStmts = nil // gone with the backend (reset, or closed)
	if ss.srv.cfg.PoolMode == PoolTransaction && be.Tenant != ss.wantTenant {
		// The transaction ran with local settings for another tenant than
		// the backend's session ones, which a function of its may have
		// changed for the session: unknown until set for the session again
		// (the path is reported from PostgreSQL 18 on). Else the same
		// client's next transaction, for the session settings' tenant, ran
		// as that other tenant (an application's connection serving its
		// tenants in turn).
		be.Tenant = "\x00"
		if !be.ReportsPath {
			be.Schema = "\x00"
		}
	}
	be.LastClient = ss.id
	ss.be = nil
	if ss.beGate != nil {
		ss.leaveGate(ss.beGate)
		ss.beGate = nil
	}
	nm := ss.nodeMetrics(be.Node())
	held := time.Since(ss.beStart)
	nm.txns.Inc()
	nm.txnSeconds.Observe(held.Seconds())
	ss.srv.observeUsage(ss, held)
	ss.releaseAfterCancel(be) // without waiting for a late cancel: the client's answer goes first
}

// nodeEntry is a session's cached pool of node name at dsn for role, good
// while Server.poolsGen is gen, and the node's metrics.
type nodeEntry struct {
	name, dsn, role string
	gen             uint64
	p               *pool.Pool
	nm              *nodeMetrics
}

// poolFor is Server.poolFor with the answers for the session's last nodes
// kept: no read lock and map lookup by node name per transaction while the
// session stays on them.
func (ss *session) poolFor(node placement.Node, role string) *pool.Pool {
	gen := ss.srv.poolsGen.Load() // before the lookup: a pool taken out after it changes gen
	for i := range ss.nodes {
		if e := &ss.nodes[i]; e.p != nil && e.gen == gen && e.name == node.Name && e.dsn == node.DSN && e.role == role {
			return e.p
		}
	}
	e := &ss.nodes[ss.nodesNext]
	ss.nodesNext = (ss.nodesNext + 1) % len(ss.nodes)
	*e = nodeEntry{name: node.Name, dsn: node.DSN, role: role, gen: gen, p: ss.srv.poolFor(node, role)}
	return e.p
}

// nodeMetrics returns node's metrics, kept with the node's pool (entries of
// Metrics.nodes are never removed): no sync.Map lookup per transaction.
func (ss *session) nodeMetrics(node string) *nodeMetrics {
	for i := range ss.nodes {
		if e := &ss.nodes[i]; e.p != nil && e.name == node {
			if e.nm == nil {
				e.nm = ss.srv.nodeMetrics(node)
			}
			return e.nm
		}
	}
	return ss.srv.nodeMetrics(node)
}

// push queues an expected response.
func (ss *session) push(e expect) {
	switch e.kind {
	case eParse, eBind, eDescS, eDescP, eExec, eClose:
		ss.unsynced = true
	case eSync, eQuery:
		ss.unsynced = false
	}
	ss.queue = append(ss.queue, e)
	if cap(ss.queue) > cap(ss.qbuf) {
		ss.qbuf = ss.queue[:0:cap(ss.queue)]
	}
	if e.kind == eSync || e.kind == eQuery || e.kind == eSynthRFQ {
		ss.syncs++
		ss.syncsPushed++
	}
}

func (ss *session) pop() {
	e := ss.queue[0]
	if e.kind == eSync || e.kind == eQuery || e.kind == eSynthRFQ {
		ss.syncs--
		ss.syncsPopped++
	}
	ss.queue[0] = expect{}
	ss.queue = ss.queue[1:]
	if len(ss.queue) == 0 {
		ss.queue = ss.qbuf[:0]
	}
}

// drainSyncs relays responses up to the last queued ReadyForQuery.
func (ss *session) drainSyncs() error {
	if ss.syncs == 0 {
		return nil
	}
	return ss.drain(false)
}

// drain relays backend responses for queued messages: up to the last
// ReadyForQuery, or (all) every queued response (after a Flush).
func (ss *session) drain(all bool) error {
	for len(ss.queue) > 0 && (all || ss.syncs > 0) {
		e := &ss.queue[0]
		switch e.kind {
		case eSynth:
			ss.cw.Write(e.synth)
			ss.pop()
			continue
		case eSynthRFQ:
			st := ss.localStatus()
			if st == 'I' {
				ss.localTenant = "" // the implicit transaction ended
			}
			ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], st))
			ss.pop()
			continue
		}
		be := ss.be
		if be == nil {
			// The backend was lost: answer what is left.
			ss.lostBackend(nil)
			continue
		}
		clientFirst := !be.R.MessageBuffered() && ss.relayed && ss.cw.Buffered() > 0
		if be.W.Buffered() > 0 && (clientFirst || ss.held != nil) {
			if err := be.W.Flush(); err != nil {
				ss.backendFailed(err)
				continue
			}
		}
		if clientFirst {
			// Stream what the server sent so far before blocking on it;
			// messages the router made itself wait for company.
			ss.relayed = false
			if err := ss.cw.Flush(); err != nil {
				return err
			}
		}
		var typ byte
		var body []byte
		var err error
		if ss.held != nil {
			typ, body, ss.held = ss.held[0], ss.held[1:], nil
		} else {
			// What is buffered for the server goes first; when the server
			// had answered everything before, the read that would find
			// nothing before it answers is skipped (wire.ReadMessageAfter).
			typ, body, err = be.R.ReadMessageAfter(be.W)
		}
		if err != nil {
			ss.backendFailed(err)
			continue
		}
		if e.skip > 0 {
			// The answers of the router's statements ahead of the client's
			// in the same Query (see combined.go).
			switch typ {
			case wire.MsgRowDescription, wire.MsgDataRow:
				continue
			case wire.MsgCommandComplete:
				e.skip--
				continue
			case wire.MsgErrorResponse:
				e.skip = 0 // the whole Query failed: the client's error
			}
		}
		if e.posShift > 0 && (typ == wire.MsgErrorResponse || typ == wire.MsgNotice) {
			if nb, moved := shiftPosition(body, e.posShift, ss.errBuf); moved {
				body, ss.errBuf = nb, nb[:0]
			}
		}
		switch typ {
		case wire.MsgReadyForQuery:
			if len(body) == 1 {
				ss.status = body[0]
			}
			if e.kind != eSync && e.kind != eQuery {
				// Unexpected; relay and carry on.
				ss.relay(typ, body)
				continue
			}
			swallow := e.swallow
			ss.pop()
			if ss.localOpen && ss.status == 'I' {
				ss.localOpen = false
			}
			if ss.abortLeft && ss.syncsPopped > ss.abortLeftAt {
				ss.abortLeft = false // the status tells again
			}
			if ss.syncs == 0 && ss.status == 'I' && ss.syncsPopped > ss.pipeMarkAt {
				// Nothing of the pipeline is left to run (the Sync answered
				// came after whatever set the flags).
				ss.clientPortal, ss.setupEach, ss.txnEndBound = false, false, false
			}
			if ss.setupOpen {
				if ss.status == 'I' {
					ss.setupOpen = false // committed
				} else {
					ss.doubtSetup() // inside a transaction that may roll back
				}
			}
			if len(ss.txnSets) > 0 && ss.status == 'I' {
				ss.endTxnSets(true)
			}
			if !swallow {
				if ss.pendingBegin != "" && ss.status == 'I' {
					// A statement run outside the deferred transaction.
					ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], 'T'))
				} else {
					ss.relay(typ, body)
					if ss.status == 'I' {
						ss.localTenant = ""
						ss.resetTenantAfterTxn()
					}
				}
			}
			if ss.status == 'I' && ss.srv.cfg.PoolMode == PoolTransaction && !ss.backendPending() {
				ss.releaseBackend()
			}
			continue
		case wire.MsgErrorResponse:
			if sev := wire.ErrorSeverity(body); sev == "FATAL" || sev == "PANIC" {
				return ss.backendFatal(body)
			}
			if e.name != "" && (e.kind == eBind || e.kind == eDescS) {
				if b := ss.stmtsDropped(e.name, body); b != nil {
					body = b // the router's error instead
				}
			}
			if e.kind == eBind && e.stmt != nil && isClientStmt(e.name) && wire.ErrorCode(body) == "0A000" {
				// A server statement clients share, made stale by DDL
				// ("cached plan must not change result type"): prepared
				// afresh on this backend at its next use, and under a new
				// name for the next client's Parse of the text, as a server
				// plans a fresh Parse; without this every later client of
				// the text on this backend failed.
				delete(be.Prepared, e.name)
				ss.srv.forgetStmt(e.stmt.server, e.stmt.query, e.stmt.types)
			}
			if !e.abort {
				ss.srv.m.Errors.WithLabelValues(be.Node(), sqlstateClass(wire.ErrorCode(body))).Inc()
				ss.relay(typ, body)
				ss.use.errors++
			}
			if e.reset {
				ss.resetFailed = true
			}
			if e.name == "setup" {
				be.Schema, be.Tenant, be.SessionSig = "\x00", "\x00", "\x00"
			}
			ss.doubtSetup() // the transaction with the setup is rolled back
			if len(ss.txnSets) > 0 {
				ss.endTxnSets(false) // and so are its SETs
			}
			setupFailed := e.setup
			switch e.kind {
			case eQuery, eSync:
				// Query: ReadyForQuery follows.
			default:
				if (e.kind == eParse || (e.kind == eBind && e.setup)) && e.name != "" {
					// Not prepared after all, or gone: prepare it again next time.
					delete(be.Prepared, e.name)
				}
				if e.kind == eParse && e.name == "" {
					be.ForgetUnnamed() // the server has none now
				}
				if e.kind == eParse && e.stmtName == "" && e.stmt != nil && ss.unnamed == e.stmt {
					ss.unnamed = nil // refused: the client has none either (26000 next)
				}
				// The server skips to Sync: so do we.
				for len(ss.queue) > 0 && ss.queue[0].kind != eSync && ss.queue[0].kind != eQuery && ss.queue[0].kind != eSynthRFQ {
					ss.dropParsed(&ss.queue[0])
					if q := &ss.queue[0]; q.kind == eParse {
						// Skipped by the server: not prepared there.
						if q.name != "" {
							delete(be.Prepared, q.name)
						} else {
							be.ForgetUnnamed() // the server's is another's
						}
					}
					ss.pop()
				}
				if setupFailed && len(ss.queue) > 0 && ss.queue[0].kind == eQuery {
					// The server ignores everything up to a Sync, the
					// client's Query too: the Sync's ReadyForQuery ends it.
					be.W.Write(wire.SyncMsg)
				}
				if len(ss.queue) == 0 {
					// No Sync sent yet (a pipeline with Flush): the server
					// ignores what the client sends until its Sync, and
					// answers nothing; the router must not wait for answers.
					ss.skipToSync = true
				}
			}
			continue
		case wire.MsgCopyInResponse:
			ss.relay(typ, body)
			if e.kind == eExec {
				ss.dropCopySyncs()
			}
			if e.copyDone {
				continue // the client already sent the whole COPY
			}
			if err := ss.copyIn(be); err != nil {
				return err
			}
			continue
		case wire.MsgCopyBothResp:
			be.Kill(errors.New("copy both is not supported"))
			continue
		case wire.MsgParamStatus:
			if werr := lexParamStatus(body); werr != nil {
				// The server now reads statement text otherwise than the
				// router checks it (lexsafe.go): end the session and close
				// the backend.
				return ss.backendFatal(wire.AppendError(nil, werr)[5:]) // the body, without type and length
			}
			if paramStatusHidden(body) && !ss.ownsPath() {
				// The router's own search_path (PostgreSQL 18 reports it),
				// or one set where the router cannot see it (a function's
				// set_config): then the backend's path is unknown, and the
				// next statement on it gets the shard's again.
				if be.Schema != "" && be.Schema != "\x00" && paramStatusValue(body) != ss.srv.searchPath(be.Schema) {
					be.Schema = "\x00"
				}
				continue
			}
			if ss.srv.cfg.PoolMode == PoolTransaction && paramStatusRole(body) {
				// A role changed where the router cannot see it (a
				// function's set_config('role', ...)): the next client
				// would run as that role.
				ss.dropBackend = true
			}
			ss.relay(typ, body)
			continue
		case wire.MsgNotice, wire.MsgNotification:
			if typ == wire.MsgNotification && ss.srv.cfg.PoolMode == PoolTransaction {
				// LISTEN is refused in transaction mode: the backend
				// listens by a LISTEN the router could not see (a DO
				// block, a function), perhaps another client's. Its
				// notifications are nobody's here; the backend is closed.
				ss.dropBackend = true
				continue
			}
			ss.relay(typ, body)
			continue
		}
		if e.kind == eDescS && e.stmt != nil {
			noteShape(e, typ, body) // see stale.go
		}
		if !e.swallow {
			ss.relay(typ, body)
			ss.use.note(typ, len(body))
		}
		if typ == wire.MsgCommandComplete {
			if len(e.prep) > 0 && string(body) == "PREPARE\x00" {
				ss.notePrepared(e.prep[0])
				e.prep = e.prep[1:]
			}
			if e.set != nil {
				ss.setDone(e.set)
				e.set = nil
			} else if len(ss.txnSets) > 0 && string(body) == "ROLLBACK\x00" {
				ss.endTxnSets(false)
			}
		}
		done := false
		switch e.kind {
		case eParse:
			done = typ == wire.MsgParseComplete
		case eBind:
			done = typ == wire.MsgBindComplete
		case eClose:
			done = typ == wire.MsgCloseComplete
		case eDescS, eDescP:
			done = typ == wire.MsgRowDescription || typ == wire.MsgNoData
		case eExec:
			done = typ == wire.MsgCommandComplete || typ == wire.MsgEmptyQuery || typ == wire.MsgPortalSuspended
		}
		if done {
			ss.pop()
		}
	}
	return nil
}

// errBackendFatal ends a session whose backend reported a FATAL error.
var errBackendFatal = errors.New("the backend connection ended with a FATAL error")

// backendFatal relays a FATAL ErrorResponse (pg_terminate_backend, a server
// shutting down, an idle session timeout) and ends the session: the server
// closes the connection after it, and clients wait for that close (as
// node-postgres does) rather than for a ReadyForQuery that never comes.
func (ss *session) backendFatal(body []byte) error {
	be := ss.be
	ss.srv.m.Errors.WithLabelValues(be.Node(), sqlstateClass(wire.ErrorCode(body))).Inc()
	ss.srv.log.Info("backend connection ended", "session", ss.id, "node", be.Node(), "code", wire.ErrorCode(body), "err", wire.ErrorMessage(body))
	ss.relay(wire.MsgErrorResponse, body)
	be.MarkBroken()
	ss.releaseBackend()
	ss.status = 'I'
	clear(ss.queue)
	ss.queue = ss.qbuf[:0]
	ss.syncs = 0
	ss.closing = true
	ss.cw.Flush()
	return errBackendFatal
}

// resetTenantAfterTxn resets the session tenant when a transaction that
// ran on a tenant's shard has ended, if Config.ResetTenantAfterTransaction
// asks for it.
func (ss *session) resetTenantAfterTxn() {
	// shardUsed is set when a statement is executed on a tenant's shard
	// (Query or Bind), not for a Parse or Describe alone.
	if !ss.shardUsed {
		return
	}
	ss.shardUsed = false
	if !ss.srv.cfg.ResetTenantAfterTransaction || ss.tenant == ss.startTenant {
		return
	}
	ss.tenant = ss.startTenant
	ss.setView()
}

// backendPending reports whether any queued response must come from the backend.
func (ss *session) backendPending() bool {
	for i := range ss.queue {
		if k := ss.queue[i].kind; k != eSynth && k != eSynthRFQ {
			return true
		}
	}
	return false
}

func (ss *session) relay(typ byte, body []byte) {
	ss.relayed = true
	wire.WriteFrame(ss.cw, typ, body)
}

// dropCopySyncs forgets the Syncs sent behind an Execute that started COPY
// FROM STDIN before the client ended the COPY (libpq sends Execute, Sync,
// then the data, CopyDone and another Sync): the server ignores a Sync in
// COPY mode, so only the client's Sync after CopyDone or CopyFail is
// answered. Waiting for the first one's ReadyForQuery hung the session.
func (ss *session) dropCopySyncs() {
	n := 0
	for n+1 < len(ss.queue) {
		e := &ss.queue[n+1]
		if e.kind != eSync || e.swallow || (ss.queue[0].copyDone && !e.inCopy) {
			break
		}
		n++
	}
	if n == 0 {
		return
	}
	copy(ss.queue[1:], ss.queue[1+n:])
	for i := len(ss.queue) - n; i < len(ss.queue); i++ {
		ss.queue[i] = expect{}
	}
	ss.queue = ss.queue[:len(ss.queue)-n]
	ss.syncs -= n
	ss.syncsPopped += uint64(n)
	if len(ss.queue) == 1 {
		ss.unsynced = true // the COPY's implicit transaction waits for a Sync
	}
}

// copyIn relays CopyData from the client until CopyDone or CopyFail.
func (ss *session) copyIn(be *pool.Conn) error {
	if err := ss.cw.Flush(); err != nil {
		return err
	}
	// A COPY is not idle, however long it streams: no idle timeout
	// (loop sets it again for the next message).
	ss.nc.SetReadDeadline(time.Time{})
	for {
		if ss.cr.Buffered() == 0 {
			if err := be.W.Flush(); err != nil {
				ss.backendFailed(err)
				return nil
			}
		}
		if ss.cr.Buffered() == 0 && (be.R.Buffered() > 0 || be.Readable()) {
			// The server spoke during COPY FROM STDIN: a notice, or an
			// error that ended the COPY (a bad row). An error goes to the
			// client now (drain relays it), not after the rest of its data,
			// which the router then drops (copyDiscard).
			typ, body, err := be.R.ReadMessage()
			if err != nil {
				ss.backendFailed(err)
				return nil
			}
			if typ == wire.MsgNotification && ss.srv.cfg.PoolMode == PoolTransaction {
				ss.dropBackend = true // see drain
				continue
			}
			if typ == wire.MsgNotice || typ == wire.MsgParamStatus || typ == wire.MsgNotification {
				ss.relay(typ, body)
				if err := ss.cw.Flush(); err != nil {
					return err
				}
				continue
			}
			ss.held = append(append(ss.held[:0], typ), body...)
			ss.copyDiscard, ss.copyStreaming = true, false
			return nil
		}
		typ, body, err := ss.cr.ReadMessage()
		if err != nil {
			be.MarkBroken()
			return err
		}
		switch typ {
		case wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			be.W.WriteFrame(typ, body)
			if typ != wire.MsgCopyData {
				ss.copyStreaming = false
				return nil
			}
		case wire.MsgFlush, wire.MsgSync:
			// Ignored by the server during COPY; do not forward.
		default:
			be.W.WriteFrame(wire.MsgCopyFail, []byte("unexpected message during COPY\x00"))
			return nil
		}
	}
}

// backendFailed handles a read/write error on the attached backend.
func (ss *session) backendFailed(err error) {
	be := ss.be
	ss.srv.log.Warn("backend connection failed", "session", ss.id, "node", be.Node(), "err", err, "reason", be.KillReason())
	ss.lostBackend(killError(be, err))
}

// killError is the error a client gets when its backend failed or was cut.
func killError(be *pool.Conn, err error) *wire.Error {
	var fe *fencedError
	reason := be.KillReason()
	switch {
	case errors.As(reason, &fe):
		return &wire.Error{Code: "40001", Message: fmt.Sprintf("the transaction was cut: %v", fe), Hint: "Retry the transaction."}
	case reason != nil && errors.Is(reason, errShutdown):
		return &wire.Error{Severity: "FATAL", Code: "57P01", Message: "the router is shutting down"}
	}
	// err (addresses, the server's words) is in the router's log (see
	// backendFailed); the client gets the node's name.
	return &wire.Error{Code: "08006", Message: fmt.Sprintf("lost the connection to node %q", be.Node()),
		Hint: "The transaction, if any, was rolled back; retry it. The router's log has the details."}
}

// nodeUnreachableError is the error a client gets when no backend
// connection to node could be opened; the reason, which names the node's
// host and user, goes to the router's log only.
func nodeUnreachableError(node string) *wire.Error {
	return &wire.Error{Code: "08006", Message: fmt.Sprintf("node %q is unreachable", node),
		Hint: fmt.Sprintf("Retry later. The router's log has the details; `pgtenant node check %s` tests the node.", node)}
}

// nodeRefusedError is the error a client gets when the node's server was
// reached but refused a new backend connection with code (see
// pool.RefusedCode): the server's SQLSTATE, so that a client tells a full
// or restarting node, worth a retry soon, from one that cannot be reached.
func nodeRefusedError(node, code string) *wire.Error {
	if code == "57P03" {
		return &wire.Error{Code: code, Message: fmt.Sprintf("node %q is not accepting connections now (starting up, shutting down or in recovery)", node),
			Hint: "Retry later. The router's log has the details."}
	}
	return &wire.Error{Code: code, Message: fmt.Sprintf("node %q refused a new backend connection for lack of resources (its max_connections or a connection limit reached)", node),
		Hint: "Retry later; or raise the node's max_connections, or lower the routers' pool size (pgtenant router --pool-size): every router's pool, and every other client of the node, shares its connection slots."}
}

// lostBackend drops the backend and answers every queued response with one
// error (and the ReadyForQuery messages the client waits for).
func (ss *session) lostBackend(werr *wire.Error) {
	if werr == nil {
		werr = &wire.Error{Code: "08006", Message: "lost the backend connection"}
	}
	wasTxn := ss.be != nil && ss.status != 'I'
	if ss.be != nil {
		ss.be.MarkBroken()
		ss.releaseBackend()
	}
	if wasTxn {
		ss.failed = true
	}
	ss.status = 'I'
	ss.srv.m.Errors.WithLabelValues("router", sqlstateClass(werr.Code)).Inc()
	ss.cw.Write(wire.AppendError(ss.out[:0], werr))
	n := 0 // the ReadyForQuery messages the client waits for
	for i := range ss.queue {
		switch q := &ss.queue[i]; q.kind {
		case eSync, eQuery:
			if !q.swallow {
				n++
			}
		case eSynthRFQ:
			n++
		}
	}
	clear(ss.queue)
	ss.queue = ss.qbuf[:0]
	ss.syncs = 0
	if n == 0 {
		ss.skipToSync = true
	}
	for i := 0; i < n; i++ {
		ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], ss.localStatus()))
	}
}

// clientFailed records a drain error (the client's connection failed:
// drain reports nothing else) and returns the error that ends the
// session; the Go error stays out of the message. Nothing more reaches
// the client, and the loop must not wait for the backend, which may be
// waiting for the client itself (the rest of a COPY FROM STDIN the client
// gave up on): the session ends at once and its backend, with answers
// still queued or a transaction open, is closed (session.end).
func (ss *session) clientFailed(err error) *wire.Error {
	if ss.clientErr == nil && !errors.Is(err, errBackendFatal) {
		ss.clientErr = err
	}
	return &wire.Error{Severity: "FATAL", Code: "08006", Message: "connection failure"}
}

// prepareOn queues a Parse of def on the attached backend unless it is there
// already, and reports whether it did; swallow hides its answer from the
// client.
func (ss *session) prepareOn(def *stmtDef, swallow bool) bool {
	be := ss.be
	name := ss.serverStmt(def)
	if name != "" {
		if _, ok := be.Prepared[name]; ok {
			return false
		}
		be.Prepared[name] = struct{}{}
		ss.closeFirst(name)
	} else {
		if be.Unnamed() == any(def) {
			return false
		}
	}
	ss.out = wire.AppendParse(ss.out[:0], name, def.query, def.types)
	be.W.WriteFrame(wire.MsgParse, ss.out)
	if name == "" {
		be.SetUnnamed(def)
	}
	ss.push(expect{kind: eParse, swallow: swallow, name: name})
	return true
}

// serverStmt is the name def is prepared under on the attached backend:
// one per client statement text and shard schema ("" for the unnamed
// statement). Postgres re-analyses and re-plans a prepared statement each
// time it runs with another search_path than it was planned with; shards
// are schemas, so one server statement shared by all shards would be
// re-planned in nearly every transaction. One per schema keeps its plan.
//
// In session pool mode a named statement keeps the client's name
// (clientName), as on a direct connection: the backend is the client's
// own, and Postgres re-plans it when it runs under another shard's
// search_path.
func (ss *session) serverStmt(def *stmtDef) string {
	if def.server == "" || def.clientName {
		return def.server
	}
	if def.tag != ss.wantTag {
		def.tag, def.tagged = ss.wantTag, def.server+"_"+ss.wantTag
	}
	return def.tagged
}

// trimPrepared closes client statements on the just attached backend when
// it holds more than Config.MaxPrepared, down to seven eighths of that,
// chosen at random (the router's own statements stay). No portal is open on
// it at this point, so none is closed with its statement.
func (ss *session) trimPrepared() {
	be, max := ss.be, ss.srv.cfg.MaxPrepared
	if len(be.Prepared) <= max {
		return
	}
	n := len(be.Prepared) - max*7/8
	for name := range be.Prepared {
		if n == 0 {
			break
		}
		if !isClientStmt(name) {
			continue
		}
		delete(be.Prepared, name)
		ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
		be.W.WriteFrame(wire.MsgClose, ss.out)
		ss.push(expect{kind: eClose, swallow: true})
		n--
	}
}

// isClientStmt reports whether a backend statement name is one made by
// Server.serverName (pgtenant_<number>...), not one of the router's own.
func isClientStmt(name string) bool {
	const p = "pgtenant_"
	return len(name) > len(p) && name[:len(p)] == p && name[len(p)] >= '0' && name[len(p)] <= '9'
}

// closeFirst queues a Close of the named statement before the router
// prepares it on the attached backend: what the router knows of a
// backend's statements can only err towards "missing" (it forgets them on
// DISCARD or DEALLOCATE even when the server skipped those), and closing a
// statement that does not exist is not an error, so the Parse cannot fail
// with 42P05.
func (ss *session) closeFirst(name string) {
	ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
	ss.be.W.WriteFrame(wire.MsgClose, ss.out)
	ss.push(expect{kind: eClose, swallow: true})
}

var _ = context.Background
