package importer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Objects the import keeps on the legacy database and on the nodes.
const (
	// markerSchema.markerTable on the legacy database takes cutover
	// markers; it is in the publication, so a marker reaches the shard's
	// node through the stream, behind every change committed before it.
	markerSchema = "pgtenant_import"
	markerTable  = "marker"
	// nodeMarkers on each node records the markers applied there.
	nodeMarkers = "pgtenant_stream.import_marker"
	// positionName is the import's key in pgtenant_stream.position on
	// each node.
	positionName = "pgtenant_import"
)

// ErrTenantChange is reported for an update that moves a row to another
// tenant.
var ErrTenantChange = coded("0A000", "an update changed a row's tenant")

// shardRoute is what the applier needs of one shard.
type shardRoute struct {
	schema, node, state string
	copyLSN             stream.LSN
	// fenced: the shard is fenced in the catalog (a cutover's pause, or a
	// rollback's): its node flushes the rounds that change it.
	fenced bool
}

// applier routes each row change of the legacy database to the shard of
// the tenant it belongs to, and applies each batch with one transaction
// per node (a stream.TableApplier per node, relations renamed to the
// shard's schema), which also records the node's position.
type applier struct {
	im      *Importer
	legacy  string // legacy schema
	rules   map[string]tables.Table
	nodes   map[string]*stream.TableApplier
	pos     map[string]stream.LSN // applied position per node at start
	tenants map[string]int
	shards  map[int]shardRoute
	rels    map[[2]any]*stream.Relation // (shard schema, relation id) → renamed relation
	parents map[[2]string]string        // (parent table, key text) → tenant
	log     *slog.Logger
	version int64 // the map version shards was read at
	// fenced are the schemas of the shards fenced at that version (shared
	// with the node appliers: replaced, never changed); newlyFenced the
	// shards fenced since the version before, whose nodes flush what they
	// applied of them (applypipe.go).
	fenced      map[string]bool
	newlyFenced []int
	// catchUp, when set, limits the applier to the tables a killed copy
	// completed, up to a new snapshot's point (see Importer.catchUp).
	catchUp *catchUp
	// hold is the point of a verify the applier stops after (verify.go).
	hold *verifyHold
	// legacyConn reads and writes the verify table on the legacy database.
	legacyConn *pgx.Conn
	// ap is the import's schema-per-tenant shape (nil: one schema), read
	// once (apartment.go); apRels are its relations with the tenant column.
	ap       *apartment
	apLoaded bool
	apRels   map[*stream.Relation]*stream.Relation
	// late counts, per shard cut over, the legacy writes not applied since
	// they were last logged (see noteLate).
	late map[int]*lateWrites
	// pipe, when set, applies each node's part of a batch in a goroutine
	// per node (applypipe.go); without it (catch-up) each batch is applied
	// to the nodes at once and durably before the next.
	pipe *pipeline

	// rejected are the rows (table, key) whose change was rejected and
	// not resolved yet (reject.go).
	rejected map[[2]string]bool

	// Rejected counts the changes rejected (reject.go).
	Rejected atomic.Int64
	// TenantChanges counts updates that moved a row to another tenant.
	TenantChanges atomic.Int64
	// Skipped counts changes for shards not copied yet or already holding them.
	Skipped atomic.Int64
}

// reload reads the shards' routes again when the map version changed (a
// cutover's flip bumps it). One round trip to the catalog, on every batch:
// a batch's changes are routed by the catalog as it was after they were
// committed on the legacy database (a shard flipped before is skipped,
// one given back by import rollback is applied again). The rows come only
// when the version is not the one read last.
func (a *applier) reload(ctx context.Context) error {
	known := int64(-1)
	if a.shards != nil {
		known = a.version
	}
	rows, err := a.im.cat.Pool().Query(ctx, `SELECT v.version, s.id, s.schema_name, s.node, i.state, coalesce(i.copy_lsn::text, ''), s.state = 'fenced'
		FROM (SELECT version FROM pgtenant.map_version) v
		LEFT JOIN (pgtenant.import_shards i JOIN pgtenant.shards s ON s.id = i.shard) ON v.version <> $1`, known)
	if err != nil {
		return fmt.Errorf("read the shards' routes: %w", err)
	}
	var v int64
	var id *int
	var schema, node, state, copyLSN *string
	var fenced *bool
	shards := map[int]shardRoute{}
	_, err = pgx.ForEachRow(rows, []any{&v, &id, &schema, &node, &state, &copyLSN, &fenced}, func() error {
		if id == nil {
			return nil
		}
		r := shardRoute{schema: *schema, node: *node, state: *state, fenced: *fenced}
		if *copyLSN != "" {
			var err error
			if r.copyLSN, err = stream.ParseLSN(*copyLSN); err != nil {
				return fmt.Errorf("shard %d copy_lsn: %w", *id, err)
			}
		}
		shards[*id] = r
		return nil
	})
	if err != nil {
		return fmt.Errorf("read the shards' routes: %w", err)
	}
	if v != known {
		fencedSchemas := map[string]bool{}
		for id, r := range shards {
			if !r.fenced {
				continue
			}
			fencedSchemas[r.schema] = true
			if old, ok := a.shards[id]; a.shards != nil && (!ok || !old.fenced) {
				a.newlyFenced = append(a.newlyFenced, id)
			}
		}
		a.shards, a.version, a.fenced = shards, v, fencedSchemas
	}
	return nil
}

func (a *applier) reloadTenants(ctx context.Context) error {
	rows, err := a.im.cat.Pool().Query(ctx, `SELECT id, shard FROM pgtenant.tenants`)
	if err != nil {
		return fmt.Errorf("read tenants: %w", err)
	}
	m := map[string]int{}
	var id string
	var shard int
	if _, err := pgx.ForEachRow(rows, []any{&id, &shard}, func() error { m[id] = shard; return nil }); err != nil {
		return fmt.Errorf("read tenants: %w", err)
	}
	a.tenants = m
	return nil
}

// column returns the index of name in rel's columns, -1 when missing.
func column(rel *stream.Relation, name string) int {
	for i, c := range rel.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

func value(t stream.Tuple, i int) (string, bool) {
	if t == nil || i < 0 || i >= len(t) || t[i].Null || t[i].Unchanged {
		return "", false
	}
	return string(t[i].Data), true
}

// tenantOf finds the tenant of one tuple of rel.
func (a *applier) tenantOf(ctx context.Context, rel *stream.Relation, t stream.Tuple) (string, error) {
	rule, ok := a.rules[rel.Table]
	if !ok {
		return "", fmt.Errorf("table %s has no rule in the tables registry", rel.Table)
	}
	switch rule.Kind {
	case tables.KindTenant:
		v, ok := value(t, column(rel, rule.TenantColumn))
		if !ok {
			if i := column(rel, rule.TenantColumn); i >= 0 && i < len(t) && t[i].Null {
				return "", fmt.Errorf("table %s: %w (column %s is NULL)", rel.Table, errNoTenant, rule.TenantColumn)
			}
			return "", fmt.Errorf("table %s: the change carries no tenant (column %s); the import sets REPLICA IDENTITY FULL on such tables", rel.Table, rule.TenantColumn)
		}
		return v, nil
	case tables.KindChild:
		key, ok := value(t, column(rel, rule.ParentKey))
		if !ok {
			if i := column(rel, rule.ParentKey); i >= 0 && i < len(t) && t[i].Null {
				return "", fmt.Errorf("table %s: %w (column %s is NULL)", rel.Table, errNoTenant, rule.ParentKey)
			}
			return "", fmt.Errorf("table %s: the change carries no %s", rel.Table, rule.ParentKey)
		}
		if tenant, ok := a.parents[[2]string{rule.Parent, key}]; ok {
			return tenant, nil
		}
		return a.lookupParent(ctx, rule, key)
	}
	return "", fmt.Errorf("table %s is shared; its changes are not streamed", rel.Table)
}

// lookupParent finds the tenant of a parent row on the nodes (where the
// stream has brought it), "" when no copied shard has it; a
// ChildRejectError when the stream rejected the parent row (reject.go).
func (a *applier) lookupParent(ctx context.Context, child tables.Table, key string) (string, error) {
	parent := a.rules[child.Parent]
	byNode := map[string][]string{}
	for _, s := range a.shards {
		if s.state == ShardCopied || a.catchUp != nil {
			byNode[s.node] = append(byNode[s.node], s.schema)
		}
	}
	for node, schemas := range byNode {
		parts := make([]string, len(schemas))
		for i, sc := range schemas {
			parts[i] = fmt.Sprintf("SELECT %s::text FROM %s WHERE %s::text = $1", pgx.Identifier{parent.TenantColumn}.Sanitize(),
				pgx.Identifier{sc, parent.Name}.Sanitize(), pgx.Identifier{child.ParentColumn}.Sanitize())
		}
		var tenant string
		err := a.onNode(node, func(conn *pgx.Conn) error {
			return conn.QueryRow(ctx, strings.Join(parts, " UNION ALL ")+" LIMIT 1", key).Scan(&tenant)
		})
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("find the tenant of %s %s on node %s: %w", parent.Name, key, node, err)
		}
		a.parents[[2]string{parent.Name, key}] = tenant
		return tenant, nil
	}
	return a.im.rejectedParent(ctx, a.rejected, child, key) // a parent the stream rejected: the child is rejected too
}

// onNode runs f on the applier's connection to node, between the node's
// rounds when a pipeline applies them.
func (a *applier) onNode(node string, f func(*pgx.Conn) error) error {
	if a.pipe != nil {
		n := a.pipe.nodes[node]
		n.mu.Lock()
		defer n.mu.Unlock()
	}
	return f(a.nodes[node].Conn)
}

// remember caches the tenant of a parent row the stream wrote.
func (a *applier) remember(rel *stream.Relation, t stream.Tuple, tenant string) {
	for _, r := range a.rules {
		if r.Kind == tables.KindChild && r.Parent == rel.Table {
			if k, ok := value(t, column(rel, r.ParentColumn)); ok {
				a.parents[[2]string{rel.Table, k}] = tenant
			}
		}
	}
}

// renamed is rel as the table of the shard's schema.
func (a *applier) renamed(rel *stream.Relation, schema string) *stream.Relation {
	k := [2]any{schema, rel.ID}
	if r, ok := a.rels[k]; ok && r.Table == rel.Table && len(r.Columns) == len(rel.Columns) {
		return r
	}
	r := *rel
	r.Schema = schema
	a.rels[k] = &r
	return &r
}

// Apply implements stream.Applier. A verify request (see Verify) makes it
// apply every transaction up to the verify's point, then hold until the
// verify has read the shards.
func (a *applier) Apply(ctx context.Context, txns []*stream.Txn) error {
	if a.catchUp != nil {
		return a.applyBatch(ctx, txns)
	}
	for len(txns) > 0 {
		if a.hold != nil {
			n := 0
			for n < len(txns) && txns[n].EndLSN <= a.hold.until {
				n++
			}
			if n == len(txns) {
				return a.applyBatch(ctx, txns)
			}
			if n > 0 {
				if err := a.applyBatch(ctx, txns[:n]); err != nil {
					return err
				}
			}
			if a.pipe != nil { // the shards hold every change up to the point
				if err := a.pipe.drain(ctx); err != nil {
					return err
				}
			}
			if err := a.holdAt(ctx); err != nil {
				return err
			}
			txns = txns[n:]
			continue
		}
		i, seq := verifyRequest(txns)
		if i < 0 {
			return a.applyBatch(ctx, txns)
		}
		if err := a.applyBatch(ctx, txns[:i+1]); err != nil {
			return err
		}
		if err := a.learnHold(ctx, seq); err != nil {
			return err
		}
		txns = txns[i+1:]
	}
	return nil
}

// applyBatch routes and applies txns (one transaction per node).
func (a *applier) applyBatch(ctx context.Context, txns []*stream.Txn) error {
	// A batch of cutover markers alone needs no routes read: a marker goes
	// to its shard's node, which an import never changes.
	if a.shards == nil || !onlyMarkers(txns) {
		if err := a.reload(ctx); err != nil {
			return err
		}
	}
	if err := a.loadApartment(ctx); err != nil {
		return err
	}
	reached := false
	if a.catchUp != nil {
		n := 0
		for n < len(txns) && txns[n].EndLSN <= a.catchUp.until {
			n++
		}
		reached, txns = n < len(txns), txns[:n]
	}
	perNode := map[string][]*stream.Txn{}
	notify := map[string][][2]string{} // node → its markers' notifications
	marks := map[string][]markPart{}   // node → its markers' shards
	for _, t := range txns {
		out := map[string]*stream.Txn{}
		add := func(node string, c stream.Change) {
			nt := out[node]
			if nt == nil {
				nt = &stream.Txn{XID: t.XID, CommitLSN: t.CommitLSN, EndLSN: t.EndLSN, CommitTime: t.CommitTime}
				out[node] = nt
			}
			nt.Changes = append(nt.Changes, c)
		}
		for _, c := range t.Changes {
			if c.Kind == stream.Truncate {
				a.log.Warn("import: a TRUNCATE on the legacy database is not applied to the shards", "tables", len(c.Truncated))
				continue
			}
			if c.Rel.Schema == markerSchema && c.Rel.Table == markerTable {
				if c.Kind != stream.Insert || a.catchUp != nil {
					continue
				}
				v, _ := value(c.New, column(c.Rel, "shard"))
				var shard int
				if _, err := fmt.Sscan(v, &shard); err != nil {
					return fmt.Errorf("marker without a shard: %w", err)
				}
				if s, ok := a.shards[shard]; ok && t.EndLSN > a.pos[s.node] {
					a.im.traceStep(shard, StepMarkerDecoded, time.Now())
					seq, _ := value(c.New, column(c.Rel, "seq"))
					notify[s.node] = append(notify[s.node], [2]string{markerChannel(shard), seq + " %s"})
					marks[s.node] = append(marks[s.node], markPart{shard: shard, schema: s.schema})
					r := *c.Rel
					r.Schema, r.Table = "pgtenant_stream", "import_marker"
					c.Rel = a.renamed(&r, "pgtenant_stream")
					add(s.node, c)
				}
				continue
			}
			if a.ap != nil { // a schema per tenant: routed by schema
				if err := a.routeSchemaChange(ctx, t, c, add); err != nil {
					return err
				}
				continue
			}
			if c.Rel.Schema != a.legacy {
				continue
			}
			tuple := c.New
			if c.Kind == stream.Delete {
				tuple = c.Old
			}
			tenant, err := a.tenantOf(ctx, c.Rel, tuple)
			if err != nil && !errors.Is(err, errNoTenant) {
				return fmt.Errorf("route a %s of %s: %w", c.Kind, c.Rel.Table, err)
			}
			if done, err := a.routeRejectable(ctx, t, c, tenant, err, add); done || err != nil {
				if err != nil {
					return err
				}
				continue
			}
			if c.Kind != stream.Delete {
				a.remember(c.Rel, c.New, tenant)
			}
			if c.Kind == stream.Update && c.Old != nil {
				if old, err := a.tenantOf(ctx, c.Rel, c.Old); err == nil && old != "" && old != tenant {
					a.TenantChanges.Add(1)
					a.log.Warn("import: an update moved a row to another tenant", "table", c.Rel.Table, "from", old, "to", tenant, "lsn", t.EndLSN)
					if err := a.routeMove(ctx, t, c, old, tenant, add); err != nil {
						if u := (*UnregisteredTenantError)(nil); errors.As(err, &u) && u.Tenant == tenant {
							if err := a.reject(ctx, t, c, tenant, fmt.Sprintf("tenant %q is not registered", tenant)); err != nil {
								return err
							}
							continue
						}
						return err
					}
					continue
				}
			}
			if tenant == "" {
				a.Skipped.Add(1) // a child whose parent no copied shard holds
				continue
			}
			if err := a.route(ctx, t, c, tenant, add); err != nil {
				if u := (*UnregisteredTenantError)(nil); errors.As(err, &u) && c.Kind != stream.Delete {
					if err := a.reject(ctx, t, c, tenant, fmt.Sprintf("tenant %q is not registered", tenant)); err != nil {
						return err
					}
					continue
				}
				return err
			}
		}
		for node, nt := range out {
			perNode[node] = append(perNode[node], nt)
		}
	}
	if a.pipe != nil {
		// The nodes of the shards fenced since the last batch flush what
		// they applied of them, beside the rest of the cutover's pause.
		flushFor := map[string][]string{}
		for _, id := range a.newlyFenced {
			if s, ok := a.shards[id]; ok {
				flushFor[s.node] = append(flushFor[s.node], s.schema)
			}
		}
		a.newlyFenced = nil
		b := a.pipe.take(txns[len(txns)-1].EndLSN, len(perNode))
		for node, ts := range perNode {
			w := nodeWork{txns: ts, batch: b, notify: notify[node], marks: marks[node], fenced: a.fenced, flushFor: flushFor[node]}
			if err := a.pipe.send(ctx, node, w); err != nil {
				return err
			}
			delete(flushFor, node)
		}
		for node, schemas := range flushFor {
			if _, ok := a.pipe.nodes[node]; !ok {
				continue
			}
			if err := a.pipe.send(ctx, node, nodeWork{fenced: a.fenced, flushFor: schemas}); err != nil {
				return err
			}
		}
		return nil
	}
	a.newlyFenced = nil // applied durably below
	if err := a.applyNodes(ctx, perNode); err != nil {
		return err
	}
	if reached {
		return errCaughtUp
	}
	return nil
}

// onlyMarkers reports whether every change of txns is a cutover marker.
func onlyMarkers(txns []*stream.Txn) bool {
	for _, t := range txns {
		for _, c := range t.Changes {
			if c.Kind != stream.Insert || c.Rel.Schema != markerSchema || c.Rel.Table != markerTable {
				return false
			}
		}
	}
	return true
}

// route adds change c of tenant to the transaction of its shard's node,
// unless that shard does not take it (not copied, or copied after it).
func (a *applier) route(ctx context.Context, t *stream.Txn, c stream.Change, tenant string, add func(string, stream.Change)) error {
	shard, ok := a.tenants[tenant]
	if !ok {
		if err := a.reloadTenants(ctx); err != nil {
			return err
		}
		if shard, ok = a.tenants[tenant]; !ok {
			return &UnregisteredTenantError{Table: c.Rel.Table, Tenant: tenant}
		}
	}
	s := a.shards[shard]
	if cu := a.catchUp; cu != nil {
		at, ok := cu.complete[s.node][c.Rel.Table]
		if !ok || t.EndLSN <= at || t.EndLSN <= a.pos[s.node] {
			a.Skipped.Add(1)
			return nil
		}
		cu.applied++
		c.Rel = a.renamed(c.Rel, s.schema)
		add(s.node, c)
		return nil
	}
	if s.state != ShardCopied || t.EndLSN <= s.copyLSN || t.EndLSN <= a.pos[s.node] {
		if s.state == ShardCutover {
			a.noteLate(shard, c.Rel.Table, t.EndLSN)
		}
		a.Skipped.Add(1)
		return nil
	}
	c.Rel = a.renamed(c.Rel, s.schema)
	add(s.node, c)
	return nil
}

// routeMove applies an update that moved a row from tenant old to tenant
// new: a delete in old's shard and an insert in new's (the same update when
// both share a shard).
func (a *applier) routeMove(ctx context.Context, t *stream.Txn, c stream.Change, old, new string, add func(string, stream.Change)) error {
	if a.tenants[old] == a.tenants[new] {
		return a.route(ctx, t, c, new, add)
	}
	for _, v := range c.New {
		if v.Unchanged {
			return fmt.Errorf("table %s: %w (%q to %q) and the new row has unchanged TOAST values; move it by hand", c.Rel.Table, ErrTenantChange, old, new)
		}
	}
	del := stream.Change{Kind: stream.Delete, Rel: c.Rel, Old: c.Old}
	if err := a.route(ctx, t, del, old, add); err != nil {
		return err
	}
	ins := stream.Change{Kind: stream.Insert, Rel: c.Rel, New: c.New}
	return a.route(ctx, t, ins, new, add)
}

// lateWrites counts one cut-over shard's legacy writes not applied.
type lateWrites struct {
	n      int64
	logged time.Time
}

// lateLogEvery is how often the writes on the legacy database for a shard
// already cut over are logged: the first, then a count at most this often.
// An import rollback writes the shard's changes back to the legacy database
// before its flip, so the stream sees every one of them.
const lateLogEvery = 30 * time.Second

// noteLate counts a legacy write of a shard already cut over (not applied:
// the shard is served from its node) and logs the first, then how many
// came since, at most every lateLogEvery.
func (a *applier) noteLate(shard int, table string, lsn stream.LSN) {
	if a.late == nil {
		a.late = map[int]*lateWrites{}
	}
	l := a.late[shard]
	if l == nil {
		l = &lateWrites{}
		a.late[shard] = l
	}
	l.n++
	if !l.logged.IsZero() && time.Since(l.logged) < lateLogEvery {
		return
	}
	a.log.Warn("import: writes on the legacy database for a shard already cut over are not applied (an import rollback writes the shard's changes back there before its flip)",
		"shard", shard, "writes", l.n, "table", table, "lsn", lsn)
	l.n, l.logged = 0, time.Now()
}

// applyNodes applies each node's transactions, the nodes at once (each in
// one transaction of its own connection that records the node's position:
// a node that fails leaves the others applied, and a restarted stream
// starts from the lowest position and skips on each node what it has).
func (a *applier) applyNodes(ctx context.Context, perNode map[string][]*stream.Txn) error {
	if len(perNode) == 1 {
		for node, ts := range perNode {
			if err := a.nodes[node].Apply(ctx, ts); err != nil {
				return fmt.Errorf("apply to node %s: %w", node, err)
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(perNode))
	for node, ts := range perNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.nodes[node].Apply(ctx, ts); err != nil {
				errs <- fmt.Errorf("apply to node %s: %w", node, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// applyAppName tags the change stream's sessions on the nodes
// (application_name), so a restarted stream can end those of a killed one.
const applyAppName = "pgtenant import apply"

// connectApply opens a connection to a node for the change stream. It runs
// with session_replication_role = replica where the role may set it (as
// PostgreSQL's own apply workers do): the changes were checked by the
// legacy database's foreign keys, and its triggers' writes come through the
// stream themselves, so firing the app's triggers again would apply them
// twice; elsewhere (42501) they run.
//
// It first ends the sessions an earlier stream left on the node's database
// (same tag, same role): a stream killed while its apply transaction waited
// for a lock leaves a server session holding the whole batch, COMMIT
// included, that would commit once the lock goes, after the new stream
// read the node's position. Ended, it rolls back. (The appliers are
// Guarded too: a session of another role, which this role may not end,
// still cannot make a batch apply twice.)
func connectApply(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	cfg.RuntimeParams["application_name"] = applyAppName
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := endEarlierAppliers(ctx, conn); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			conn.Close(context.Background())
			return nil, err
		}
	}
	return conn, nil
}

// endEarlierAppliers ends the other sessions of conn's database and role
// tagged applyAppName, waiting up to 10 s for each to end (and roll back).
func endEarlierAppliers(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT pid, pg_terminate_backend(pid, 10000) FROM pg_stat_activity
		WHERE datname = current_database() AND usename = current_user AND application_name = $1 AND pid <> pg_backend_pid()`, applyAppName)
	if err != nil {
		return fmt.Errorf("end an earlier stream's sessions: %w", err)
	}
	var pid int32
	var ended bool
	_, err = pgx.ForEachRow(rows, []any{&pid, &ended}, func() error {
		if !ended {
			return fmt.Errorf("end an earlier stream's session (pid %d): it did not end within 10 s", pid)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("end an earlier stream's sessions: %w", err)
	}
	return nil
}
