package tenantops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// PurgeOptions tune Purge.
type PurgeOptions struct {
	// Batch is the rows deleted per transaction; 0 means 5000.
	Batch int
	// DryRun counts the rows and deletes nothing.
	DryRun bool
	// Progress, when set, is called after each table is purged.
	Progress func(tables.RowCount)
	// SkipUnregistered leaves tables without a rule alone instead of
	// refusing (tenant remove's check: its rows there are not looked at).
	SkipUnregistered bool
}

// PurgeReport says what Purge deleted (or, for a dry run, would delete).
type PurgeReport struct {
	Tenant string
	Shard  int
	Node   string
	// Tables lists every table with tenant rows in the shard, in the order
	// they are purged (children first), with the rows found before the
	// purge (Rows) and deleted (Deleted; zero for a dry run).
	Tables []PurgeTable
	DryRun bool
}

// PurgeTable is one table of a PurgeReport.
type PurgeTable struct {
	Table   string
	Rows    int64
	Deleted int64
}

// Total is the rows deleted (found, for a dry run).
func (r PurgeReport) Total() int64 {
	var n int64
	for _, t := range r.Tables {
		if r.DryRun {
			n += t.Rows
		} else {
			n += t.Deleted
		}
	}
	return n
}

// Purge deletes every row of tenant id from every registered table of its
// shard, children first, Batch rows per transaction, and reports the rows
// per table. The tenant stays registered (see Remove). A table of the shard
// without a rule stops it before anything is deleted.
func (o *Ops) Purge(ctx context.Context, id string, opts PurgeOptions) (PurgeReport, error) {
	rep := PurgeReport{Tenant: id, DryRun: opts.DryRun}
	loc, err := o.locate(ctx, id)
	if err != nil {
		return rep, err
	}
	rep.Shard, rep.Node = loc.Shard.ID, loc.Node.Name
	conn, err := connect(ctx, loc.dsn, "node "+loc.Node.Name)
	if err != nil {
		return rep, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := o.loadTablesLax(ctx, conn, loc.Shard.Schema, opts.SkipUnregistered)
	if err != nil {
		return rep, err
	}
	order := st.deleteOrder()
	counts, err := tables.CountTenantRows(ctx, conn, st.schema, id, order)
	if err != nil {
		return rep, err
	}
	found := map[string]int64{}
	for _, rc := range counts {
		found[rc.Table] = rc.Rows
	}
	idx := map[string]int{}
	for _, r := range tablesPurgeOrder(order) {
		idx[r.Name] = len(rep.Tables)
		rep.Tables = append(rep.Tables, PurgeTable{Table: r.Name, Rows: found[r.Name]})
	}
	if opts.DryRun {
		return rep, nil
	}
	err = tables.PurgeTenant(ctx, conn, st.schema, id, order, opts.Batch, func(rc tables.RowCount) {
		rep.Tables[idx[rc.Table]].Deleted = rc.Rows
		if opts.Progress != nil {
			opts.Progress(rc)
		}
	})
	if err != nil {
		return rep, fmt.Errorf("purge tenant %q (run it again to finish): %w", id, err)
	}
	o.cat.RecordOperation(ctx, "tenant purge", map[string]any{"tenant": id, "shard": rep.Shard, "rows": rep.Total()}, nil)
	return rep, nil
}

// tablesPurgeOrder is the order tables.PurgeTenant deletes in: child
// tables first, then tenant tables, each in the given order.
func tablesPurgeOrder(rules []tables.Table) []tables.Table {
	var out []tables.Table
	for _, k := range []tables.Kind{tables.KindChild, tables.KindTenant} {
		for _, r := range rules {
			if r.Kind == k {
				out = append(out, r)
			}
		}
	}
	return out
}

// ErrTenantHasRows means a tenant still has rows in registered tables.
var ErrTenantHasRows = errors.New("the tenant still has rows")

// RemoveOptions choose what Remove does with a tenant's rows.
type RemoveOptions struct {
	// Purge deletes the tenant's rows from every registered table first.
	Purge bool
	// Force unregisters the tenant even though it has rows (they stay).
	Force bool
	// Batch is the rows deleted per transaction when purging; 0 means 5000.
	Batch int
	// Progress, when set, is called after each table is purged.
	Progress func(tables.RowCount)
}

// Remove unregisters tenant id (tables without a rule are not looked at). While the tenant has rows in any registered
// table it is refused with ErrTenantHasRows naming the tables and counts,
// unless opts.Purge (the rows are deleted with Purge, then the tenant
// unregistered, then rows written meanwhile deleted too) or opts.Force. It
// returns the rows found before a purge.
func (o *Ops) Remove(ctx context.Context, id string, opts RemoveOptions) ([]tables.RowCount, error) {
	dry, err := o.Purge(ctx, id, PurgeOptions{DryRun: true, SkipUnregistered: true})
	if err != nil {
		return nil, fmt.Errorf("remove tenant: %w", err)
	}
	var counts []tables.RowCount
	var parts []string
	for _, t := range dry.Tables {
		if t.Rows > 0 {
			counts = append(counts, tables.RowCount{Table: t.Table, Rows: t.Rows})
			parts = append(parts, fmt.Sprintf("%s (%d)", t.Table, t.Rows))
		}
	}
	if len(counts) > 0 && !opts.Purge && !opts.Force {
		return counts, fmt.Errorf("tenant %q has rows in %s: %w; delete them with `pgtenant tenant remove --purge`, or keep them with --force", id, strings.Join(parts, ", "), ErrTenantHasRows)
	}
	purge := func(progress func(tables.RowCount)) error {
		_, err := o.Purge(ctx, id, PurgeOptions{Batch: opts.Batch, Progress: progress, SkipUnregistered: true})
		return err
	}
	if len(counts) > 0 && opts.Purge {
		if err := purge(opts.Progress); err != nil {
			return counts, fmt.Errorf("remove tenant: the tenant is still registered: %w", err)
		}
	}
	// Where the rows are, to delete what transactions routed before the
	// routers forgot the tenant wrote meanwhile.
	loc, lerr := o.locate(ctx, id)
	if err := o.cat.RemoveTenant(ctx, id); err != nil {
		return counts, err
	}
	if opts.Purge && lerr == nil {
		if err := o.purgeIn(ctx, loc, id, opts.Batch); err != nil {
			return counts, fmt.Errorf("remove tenant: unregistered, but deleting rows written meanwhile failed: %w", err)
		}
	}
	return counts, nil
}

// purgeIn deletes tenant id's rows from the shard at loc (the tenant need
// not be registered there any more).
func (o *Ops) purgeIn(ctx context.Context, loc located, id string, batch int) error {
	conn, err := connect(ctx, loc.dsn, "node "+loc.Node.Name)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := o.loadTablesLax(ctx, conn, loc.Shard.Schema, true)
	if err != nil {
		return err
	}
	return tables.PurgeTenant(ctx, conn, st.schema, id, st.deleteOrder(), batch, nil)
}
