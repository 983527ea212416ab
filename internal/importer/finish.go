package importer

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// Status is the import's state for `import status`.
type Status struct {
	Import
	// Lag is how many bytes of the legacy database's WAL the stream has not
	// confirmed yet (-1 when unknown); SlotActive says whether a stream is
	// reading the slot now.
	Lag        int64
	SlotActive bool
	Shards     []ShardProgress
	// Counts of shards per state.
	Counts map[string]int
	// Rejects are the changes the stream rejected, not resolved
	// (reject.go); Unimported the legacy tables neither in the import nor
	// excluded (unimported.go; nil when the legacy database is out of reach).
	Rejects    []Reject
	Unimported []string
}

// Status reads the import's state, its shards and the stream's lag.
func (im *Importer) Status(ctx context.Context) (*Status, error) {
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	st := &Status{Import: *imp, Lag: -1, Counts: map[string]int{}}
	if st.Shards, err = im.shards(ctx); err != nil {
		return nil, err
	}
	for _, s := range st.Shards {
		st.Counts[s.State]++
	}
	if st.Rejects, err = im.Rejects(ctx); err != nil {
		return nil, err
	}
	if imp.Method == MethodTrigger {
		im.queueStatus(ctx, imp, st)
	}
	// The tables not in the import are named from import init on (before
	// import start too: a table created after init), the lag once a slot
	// exists.
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return st, nil // out of reach: no lag, Unimported nil
	}
	defer legacy.Close(context.Background())
	if imp.Slot != "" {
		var lag *int64
		err := legacy.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, active FROM pg_replication_slots WHERE slot_name = $1`,
			imp.Slot).Scan(&lag, &st.SlotActive)
		if err == nil && lag != nil {
			st.Lag = *lag
		}
	}
	if st.Unimported, err = im.unimported(ctx, legacy, imp); err != nil {
		return nil, err
	}
	return st, nil
}

// ErrNotCutOver: import finish with shards still on the legacy database.
var ErrNotCutOver = coded("55000", "shards are still served from the legacy database; cut them over first (pgtenant import cutover --all)")

// Finish ends an import whose shards are all cut over: it drops the slot
// (ending a stream still reading it), the publication and the marker
// schema on the legacy database and gives back the replica identities it
// changed, forgets the stream's positions on the nodes, and removes the
// import and the legacy node from the catalog. The legacy database keeps
// its tables and rows, for the operator to archive.
//
// It refuses while a legacy table is neither in the import nor excluded
// (UnimportedError) or a change the stream rejected is not resolved
// (RejectsError), unless opts.AcceptRejects drops those on purpose.
func (im *Importer) Finish(ctx context.Context) error {
	return im.FinishWith(ctx, FinishOptions{})
}

// FinishOptions tune FinishWith.
type FinishOptions struct {
	// AcceptRejects drops the rejected changes not resolved on purpose
	// (their rows stay on the legacy database only; each is logged).
	AcceptRejects bool
}

// FinishWith is Finish with options.
func (im *Importer) FinishWith(ctx context.Context, opts FinishOptions) error {
	imp, err := im.load(ctx)
	if err != nil {
		return err
	}
	if err := im.CheckUnimported(ctx, "import finish"); err != nil {
		return err
	}
	if opts.AcceptRejects {
		if _, err := im.AcceptRejects(ctx, "import finish"); err != nil {
			return err
		}
	} else if err := im.CheckRejects(ctx, "import finish", nil); err != nil {
		return err
	}
	shards, err := im.shards(ctx)
	if err != nil {
		return err
	}
	var left []int
	for _, s := range shards {
		if s.State != ShardCutover {
			left = append(left, s.Shard)
		}
	}
	if len(left) > 0 {
		return fmt.Errorf("import finish: %d shard(s), e.g. %v: %w", len(left), left[:min(len(left), 10)], ErrNotCutOver)
	}
	var full []string
	if err := im.cat.Pool().QueryRow(ctx, `SELECT full_identity FROM pgtenant.imports WHERE state <> 'finished'`).Scan(&full); err != nil {
		return fmt.Errorf("import finish: %w", err)
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("import finish: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	if imp.Method == MethodTrigger {
		if err := im.dropCapture(ctx, legacy, imp); err != nil {
			return fmt.Errorf("import finish: %w", err)
		}
	}
	if imp.Slot != "" {
		if err := stream.DropSlot(ctx, legacy, imp.Slot); err != nil {
			return fmt.Errorf("import finish: %w", err)
		}
	}
	if _, err := legacy.Exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{PublicationName}.Sanitize()+`; DROP SCHEMA IF EXISTS `+markerSchema+` CASCADE`); err != nil {
		return fmt.Errorf("import finish: drop the publication and marker table: %w", err)
	}
	for _, t := range full {
		if _, err := legacy.Exec(ctx, "ALTER TABLE "+pgx.Identifier{imp.LegacySchema, t}.Sanitize()+" REPLICA IDENTITY DEFAULT"); err != nil {
			return fmt.Errorf("import finish: give %s its replica identity back: %w", t, err)
		}
	}
	// The reverse streams kept for import rollback: slots and publications
	// on the nodes, positions (and the table, when it holds no other) on
	// the legacy database.
	revSlots := map[int]string{}
	rows, err := im.cat.Pool().Query(ctx, `SELECT shard, coalesce(reverse_slot, '') FROM pgtenant.import_shards`)
	if err != nil {
		return fmt.Errorf("import finish: %w", err)
	}
	var shard int
	var slot string
	if _, err := pgx.ForEachRow(rows, []any{&shard, &slot}, func() error { revSlots[shard] = slot; return nil }); err != nil {
		return fmt.Errorf("import finish: %w", err)
	}
	conns := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range conns {
			c.Close(context.Background())
		}
	}()
	for _, s := range shards {
		conn := conns[s.Node]
		if conn == nil {
			if conn, err = connect(ctx, s.NodeDSN); err != nil {
				return fmt.Errorf("import finish: connect to node %s: %w", s.Node, err)
			}
			conns[s.Node] = conn
			err = stream.DeletePosition(ctx, conn, positionName)
			if err == nil {
				_, err = conn.Exec(ctx, `DROP TABLE IF EXISTS `+nodeMarkers+`, `+copyProgressTable+`, `+deferredIndexTable+`, `+queuePosTable+` CASCADE`)
			}
			if err != nil {
				return fmt.Errorf("import finish: node %s: %w", s.Node, err)
			}
		}
		if err := dropReverse(ctx, legacy, conn, s.Shard, revSlots[s.Shard]); err != nil {
			return fmt.Errorf("import finish: node %s: %w", s.Node, err)
		}
	}
	if _, err := legacy.Exec(ctx, `DO $$ BEGIN
		IF to_regclass('pgtenant_stream.position') IS NOT NULL THEN
			IF NOT EXISTS (SELECT FROM pgtenant_stream.position) THEN
				DROP SCHEMA pgtenant_stream CASCADE;
			END IF;
		END IF; END $$`); err != nil {
		return fmt.Errorf("import finish: drop the reverse streams' position table: %w", err)
	}
	err = pgx.BeginFunc(ctx, im.cat.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.import_shards`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.imports`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM pgtenant.nodes WHERE name = $1`, imp.LegacyNode)
		return err
	})
	im.cat.RecordOperation(ctx, "import finish", map[string]any{"node": imp.LegacyNode, "shards": len(shards)}, err)
	if err != nil {
		return fmt.Errorf("import finish: %w", err)
	}
	im.logger.Info("import finished", "node", imp.LegacyNode)
	return nil
}
