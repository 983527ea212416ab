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
		be.Prepared[name] = 0
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
		if ss.inTxn() {
			// In a transaction block the portal outlives the Sync: the
			// client's Execute of no portal of its own would run it
			// (SELECT 0) instead of getting 34000. It is closed only
			// should the client ask for portal "" without binding it
			// (closeOwnUnnamed): a Bind of its own replaces it.
			ss.ownUnnamed = true
		}
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

// closeOwnUnnamed is called before the client's Execute or Describe of
// portal "": when the server's unnamed portal may be the router's own
// (ownUnnamed), it queues Close P "" first, its answer swallowed, so that
// the server answers as it would to a client with no unnamed portal (34000,
// also in an aborted block). Should the server be skipping to Sync, it
// skips the Close and the Execute alike.
func (ss *session) closeOwnUnnamed() {
	if !ss.ownUnnamed {
		return
	}
	ss.ownUnnamed = false
	ss.be.W.Write(closeUnnamedPortal)
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
			loc, e := ss.locateTxn(m, tenant)
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
		// An idle connection first: the cancellable context (a lock pair
		// and context checks per checkout) only for a checkout that waits
		// or connects, which a cancel request may end.
		if be = p.TryAcquire(); be == nil {
			be, err = p.Acquire(ss.acquireCtx())
			cancelled = ss.acquireDone()
		}
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
	ss.ownUnnamed, ss.unnamedDoubt = false, false
	if ss.pendingBegin == "" { // (else the SETs of a statement run outside the deferred block: endDeferredSets)
		ss.txnSets = ss.txnSets[:0]
	}
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
