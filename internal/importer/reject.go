package importer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Rejected changes. Before streaming, import init and import start refuse a
// row without a tenant or with a tenant not registered (nothing changed
// yet, the operator fixes the rows). While streaming, the app can still
// write such a row on the legacy database; stopping the stream at it (as
// before) stopped the import for good: every restart replayed the change.
// Instead the stream rejects the change into pgtenant.import_rejects (the
// table, the row's key, its LSN, why, and the row) and goes on:
//   - a later change of the row that gives it a registered tenant (an UPDATE
//     on the legacy database, or any UPDATE once its tenant is registered)
//     applies the whole row to that tenant's shard and resolves the reject;
//     a DELETE of the row resolves it too (nothing left to import);
//   - import status and import verify list the rejects not resolved;
//   - import cutover --all and import finish refuse while any is left
//     (ErrRejects, 55000), a cutover of one shard while one names a tenant
//     of it; import finish --accept-rejects drops them on purpose.
// Nothing is dropped silently. The rejects are written to the catalog
// before the batch's parts go to the nodes; a stream restarted before the
// nodes hold the batch routes its changes again: the insert of a reject is
// idempotent (table, key, LSN), and rejects resolved at a position the
// restarted stream replays count as not resolved again until it does.

// ErrRejects: rejected changes are not resolved.
var ErrRejects = coded("55000", "rejected changes of the legacy database are not resolved")

// RejectsError says which rejected changes stop a cutover or a finish.
type RejectsError struct {
	Op      string
	Rejects []Reject
}

func (e *RejectsError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", e.Op, withSQLState("55000", fmt.Sprintf("%d change(s) of the legacy database were rejected by the change stream and are not resolved", len(e.Rejects))))
	for i, r := range e.Rejects {
		if i == 5 {
			fmt.Fprintf(&b, "\n  ... and %d more (pgtenant import status)", len(e.Rejects)-5)
			break
		}
		fmt.Fprintf(&b, "\n  %s", r)
	}
	b.WriteString("\n  hint: fix each row on the legacy database (give it a registered tenant: pgtenant tenant add ID, then UPDATE the row), " +
		"the stream then applies it to its shard; or drop them on purpose with --accept-rejects")
	return b.String()
}

// SQLState is 55000 (object_not_in_prerequisite_state).
func (e *RejectsError) SQLState() string { return "55000" }

func (e *RejectsError) Unwrap() error { return ErrRejects }

// Reject is a change of the legacy database the stream could not route.
type Reject struct {
	Table, Key, Tenant, Reason, LSN string
}

func (r Reject) String() string {
	s := fmt.Sprintf("%s %s at %s: %s", r.Table, r.Key, r.LSN, r.Reason)
	return s
}

// Rejects returns the rejected changes not resolved, oldest first.
func (im *Importer) Rejects(ctx context.Context) ([]Reject, error) {
	rows, err := im.cat.Pool().Query(ctx, `SELECT tbl, row_key, coalesce(tenant, ''), reason, lsn::text FROM pgtenant.import_rejects
		WHERE resolved_lsn IS NULL ORDER BY lsn, id`)
	if err != nil {
		return nil, fmt.Errorf("read the rejected changes: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Reject])
	if err != nil {
		return nil, fmt.Errorf("read the rejected changes: %w", err)
	}
	return out, nil
}

// AcceptRejects marks every rejected change not resolved as dropped on
// purpose (its row stays on the legacy database only) and returns them.
func (im *Importer) AcceptRejects(ctx context.Context, op string) ([]Reject, error) {
	rs, err := im.Rejects(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.import_rejects SET resolved_lsn = lsn, resolution = $1, resolved_at = now()
		WHERE resolved_lsn IS NULL`, "dropped on purpose ("+op+" --accept-rejects)"); err != nil {
		return nil, fmt.Errorf("accept the rejected changes: %w", err)
	}
	for _, r := range rs {
		im.logger.Warn("import: a rejected change dropped on purpose; its row stays on the legacy database only", "op", op, "table", r.Table, "key", r.Key, "lsn", r.LSN, "reason", r.Reason)
	}
	return rs, nil
}

// CheckRejects returns a RejectsError when rejected changes are not
// resolved: any of them for shards nil (every shard: import finish,
// cutover --all), else those whose tenant is registered on one of shards
// (a cutover of these shards would leave their rows behind).
func (im *Importer) CheckRejects(ctx context.Context, op string, shards []int) error {
	rs, err := im.Rejects(ctx)
	if err != nil || len(rs) == 0 {
		return err
	}
	if shards != nil {
		tenants, err := im.tenantShards(ctx)
		if err != nil {
			return err
		}
		on := map[int]bool{}
		for _, s := range shards {
			on[s] = true
		}
		var mine []Reject
		for _, r := range rs {
			if s, ok := tenants[r.Tenant]; ok && on[s] {
				mine = append(mine, r)
			}
		}
		rs = mine
	}
	if len(rs) == 0 {
		return nil
	}
	return &RejectsError{Op: op, Rejects: rs}
}

// rejectKey is a row's identity (its replica identity's values) as text.
func rejectKey(rel *stream.Relation, t stream.Tuple) string {
	m := map[string]any{}
	for _, i := range rel.KeyColumns() {
		if i < len(t) && !t[i].Null && !t[i].Unchanged {
			m[rel.Columns[i].Name] = string(t[i].Data)
		} else {
			m[rel.Columns[i].Name] = nil
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// rowJSON is a row as a JSON object of its columns' text values.
func rowJSON(rel *stream.Relation, t stream.Tuple) []byte {
	m := map[string]any{}
	for i, c := range rel.Columns {
		if i >= len(t) || t[i].Null {
			m[c.Name] = nil
		} else if !t[i].Unchanged {
			m[c.Name] = string(t[i].Data)
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// loadRejects reads the rejects a stream starting at from must know:
// those not resolved, and those resolved at a position it replays.
func (a *applier) loadRejects(ctx context.Context, from stream.LSN) error {
	rows, err := a.im.cat.Pool().Query(ctx, `SELECT tbl, row_key FROM pgtenant.import_rejects
		WHERE resolved_lsn IS NULL OR resolved_lsn > $1::text::pg_lsn`, from.String())
	if err != nil {
		return fmt.Errorf("read the rejected changes: %w", err)
	}
	a.rejected = map[[2]string]bool{}
	var tbl, key string
	_, err = pgx.ForEachRow(rows, []any{&tbl, &key}, func() error { a.rejected[[2]string{tbl, key}] = true; return nil })
	if err != nil {
		return fmt.Errorf("read the rejected changes: %w", err)
	}
	return nil
}

// reject records change c of t as rejected (reason; tenant "" when the row
// has none) and resolves the reject of the row's earlier version.
func (a *applier) reject(ctx context.Context, t *stream.Txn, c stream.Change, tenant, reason string) error {
	if c.Kind == stream.Update {
		if err := a.resolve(ctx, t, c, "superseded by a later change of the row, rejected too"); err != nil {
			return err
		}
	}
	key := rejectKey(c.Rel, c.New)
	if err := a.im.recordReject(ctx, c.Rel.Table, key, t.EndLSN, tenant, reason, rowJSON(c.Rel, c.New)); err != nil {
		return err
	}
	if a.rejected == nil {
		a.rejected = map[[2]string]bool{}
	}
	a.rejected[[2]string{c.Rel.Table, key}] = true
	a.Rejected.Add(1)
	return nil
}

// recordReject writes a rejected change into pgtenant.import_rejects
// (idempotent: a stream that routes the change again writes nothing) and
// logs it. Both followers write the same record: lsn is the change's
// position, for the trigger method its queue id (queueLSN).
func (im *Importer) recordReject(ctx context.Context, table, key string, lsn stream.LSN, tenant, reason string, row []byte) error {
	var tn *string
	if tenant != "" {
		tn = &tenant
	}
	if _, err := im.cat.Pool().Exec(ctx, `INSERT INTO pgtenant.import_rejects (tbl, row_key, lsn, tenant, reason, row_data)
		VALUES ($1, $2, $3::text::pg_lsn, $4, $5, $6) ON CONFLICT (tbl, row_key, lsn) DO NOTHING`,
		table, key, lsn.String(), tn, reason, row); err != nil {
		return fmt.Errorf("record a rejected change of %s: %w", table, err)
	}
	im.logger.Warn("import: a change of the legacy database rejected (kept in pgtenant.import_rejects; import status lists it)",
		"table", table, "key", key, "lsn", lsn, "reason", reason)
	return nil
}

// resolveReject marks the rejects of the row (table, key) made before lsn
// resolved at lsn.
func (im *Importer) resolveReject(ctx context.Context, table, key string, lsn stream.LSN, how string) error {
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.import_rejects SET resolved_lsn = $3::text::pg_lsn, resolution = $4, resolved_at = now()
		WHERE tbl = $1 AND row_key = $2 AND lsn < $3::text::pg_lsn AND (resolved_lsn IS NULL OR resolved_lsn >= $3::text::pg_lsn)`,
		table, key, lsn.String(), how); err != nil {
		return fmt.Errorf("resolve a rejected change of %s: %w", table, err)
	}
	im.logger.Info("import: a rejected change resolved", "table", table, "key", key, "lsn", lsn, "how", how)
	return nil
}

// ChildRejectError: a child row (a table without the tenant column, e.g.
// meter_notes via meter_id) whose parent row was rejected by the change
// stream. No shard holds the parent, so none can hold the child: the child
// is rejected too, named by its table and key like its parent, and the
// parent's tenant is recorded with it (a cutover of that tenant's shard
// names it). It wraps errNoTenant.
type ChildRejectError struct {
	Table, Parent, Column, Key string
	// ParentReason is why the parent row was rejected.
	ParentReason string
}

func (e *ChildRejectError) Error() string {
	return fmt.Sprintf("table %s: %s: its parent row (%s %s = %s) was rejected: %s", e.Table, errNoTenant, e.Parent, e.Column, e.Key, e.ParentReason)
}

func (e *ChildRejectError) Unwrap() error { return errNoTenant }

// hasRejectsOf reports whether rejected (rows whose change is rejected and
// not resolved) holds a row of table.
func hasRejectsOf(rejected map[[2]string]bool, table string) bool {
	for k := range rejected {
		if k[0] == table {
			return true
		}
	}
	return false
}

// rejectedParent looks for a reject not resolved of the parent row of a
// child row (the parent table's row whose column holds key). It returns
// the parent's tenant ("" when it has none) and a ChildRejectError, or
// ("", nil) when the parent row is not rejected.
func (im *Importer) rejectedParent(ctx context.Context, rejected map[[2]string]bool, child tables.Table, key string) (string, error) {
	if !hasRejectsOf(rejected, child.Parent) {
		return "", nil
	}
	var tenant, reason string
	err := im.cat.Pool().QueryRow(ctx, `SELECT coalesce(tenant, ''), reason FROM pgtenant.import_rejects
		WHERE tbl = $1 AND resolved_lsn IS NULL AND row_data->>$2 = $3 ORDER BY lsn DESC, id DESC LIMIT 1`,
		child.Parent, child.ParentColumn, key).Scan(&tenant, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look for a rejected parent row of %s: %w", child.Name, err)
	}
	return tenant, &ChildRejectError{Table: child.Name, Parent: child.Parent, Column: child.ParentColumn, Key: key, ParentReason: reason}
}

// wasRejected reports whether the row changed by c (its key before the
// change) has a reject the stream must resolve.
func (a *applier) wasRejected(c stream.Change) bool {
	if len(a.rejected) == 0 || c.Kind == stream.Insert {
		return false
	}
	return a.rejected[[2]string{c.Rel.Table, rejectKey(c.Rel, c.Key())}]
}

// resolve marks the reject of the row changed by c (its key before the
// change) resolved at t's end.
func (a *applier) resolve(ctx context.Context, t *stream.Txn, c stream.Change, how string) error {
	key := rejectKey(c.Rel, c.Key())
	if !a.rejected[[2]string{c.Rel.Table, key}] {
		return nil
	}
	if err := a.im.resolveReject(ctx, c.Rel.Table, key, t.EndLSN, how); err != nil {
		return err
	}
	delete(a.rejected, [2]string{c.Rel.Table, key})
	return nil
}

// asInsert is update c as the insert of its new row (a row rejected before:
// no shard holds it), its unchanged TOAST values taken from the old row
// when it carries them.
func asInsert(c stream.Change) (stream.Change, error) {
	n := make(stream.Tuple, len(c.New))
	copy(n, c.New)
	for i := range n {
		if n[i].Unchanged {
			if c.Old == nil || i >= len(c.Old) || c.Old[i].Unchanged {
				return c, fmt.Errorf("table %s: a row rejected before got a tenant, but its update leaves a TOAST value unsent; update that column on the legacy database too", c.Rel.Table)
			}
			n[i] = c.Old[i]
		}
	}
	return stream.Change{Kind: stream.Insert, Rel: c.Rel, New: n}, nil
}

// routeRejectable handles the changes of rows without a tenant and of rows
// rejected before (tenantErr is tenantOf's errNoTenant, or nil); done
// reports that c needs nothing more.
func (a *applier) routeRejectable(ctx context.Context, t *stream.Txn, c stream.Change, tenant string, tenantErr error, add func(string, stream.Change)) (done bool, err error) {
	noTenant := tenantErr != nil
	was := a.wasRejected(c)
	switch {
	case c.Kind == stream.Delete:
		if was {
			if err := a.resolve(ctx, t, c, "the row was deleted on the legacy database"); err != nil {
				return true, err
			}
		}
		if noTenant || was { // no shard holds the row
			a.Skipped.Add(1)
			return true, nil
		}
		return false, nil
	case noTenant:
		if c.Kind == stream.Update && !was && c.Old != nil {
			// The row had a tenant: it leaves that tenant's shard.
			if old, err := a.tenantOf(ctx, c.Rel, c.Old); err == nil && old != "" {
				a.TenantChanges.Add(1)
				if err := a.route(ctx, t, stream.Change{Kind: stream.Delete, Rel: c.Rel, Old: c.Old}, old, add); err != nil {
					return true, err
				}
			}
		}
		return true, a.reject(ctx, t, c, tenant, tenantErr.Error()) // tenant: a rejected parent's, or ""
	case was && c.Kind == stream.Update:
		// A row rejected before now has a tenant: its whole row goes to
		// the tenant's shard.
		if _, ok := a.tenants[tenant]; !ok {
			if err := a.reloadTenants(ctx); err != nil {
				return true, err
			}
			if _, ok := a.tenants[tenant]; !ok {
				return true, a.reject(ctx, t, c, tenant, fmt.Sprintf("tenant %q is not registered", tenant))
			}
		}
		ins, err := asInsert(c)
		if err != nil {
			return true, err
		}
		a.remember(c.Rel, c.New, tenant)
		if err := a.route(ctx, t, ins, tenant, add); err != nil {
			return true, err
		}
		return true, a.resolve(ctx, t, c, fmt.Sprintf("applied to tenant %q", tenant))
	}
	return false, nil
}
