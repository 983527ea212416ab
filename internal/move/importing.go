package move

import (
	"context"
	"errors"
	"fmt"
)

// ErrImporting: the shard (or the target node) belongs to a running import
// (internal/importer): its tenants are served from the legacy database until
// `pgtenant import cutover`, which is the only way they move.
var ErrImporting = errors.New("the shard is being imported from a legacy database; it moves by `pgtenant import cutover`")

// refuseImporting refuses to move a shard that a running import serves from
// the legacy database, or to move any shard to the legacy node. A catalog
// without the import tables (older schema) has no import.
func (m *Mover) refuseImporting(ctx context.Context, shard int, toNode string) error {
	if err := m.refuseSplitting(ctx, shard); err != nil {
		return err
	}
	var present bool
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT to_regclass('pgtenant.import_shards') IS NOT NULL`).Scan(&present); err != nil {
		return fmt.Errorf("read imports: %w", err)
	}
	if !present {
		return nil
	}
	var shardImporting, toLegacy bool
	err := m.cfg.Catalog.QueryRow(ctx, `SELECT
		coalesce((SELECT s.state <> 'cutover' FROM pgtenant.import_shards s, pgtenant.imports i WHERE s.shard = $1 AND i.state <> 'finished'), false),
		EXISTS (SELECT FROM pgtenant.imports WHERE legacy_node = $2 AND state <> 'finished')`, shard, toNode).Scan(&shardImporting, &toLegacy)
	if err != nil {
		return fmt.Errorf("read imports: %w", err)
	}
	if toLegacy {
		return fmt.Errorf("node %q is the legacy node of an import: %w", toNode, ErrImporting)
	}
	if shardImporting {
		return fmt.Errorf("shard %d: %w", shard, ErrImporting)
	}
	return nil
}
