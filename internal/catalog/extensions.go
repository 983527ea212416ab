package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Extension is an extension recorded as installed in the shared schema of
// every node (pgtenant extension add).
type Extension struct {
	Name, Schema string
}

// RecordExtension records that extension name is installed in schema on
// every node, so that nodes added later get it too.
func (c *Catalog) RecordExtension(ctx context.Context, name, schema string) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.extensions (name, schema) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET schema = excluded.schema`, name, schema)
	if err != nil {
		if isUndefinedTable(err) {
			err = ErrNotInitialized
		}
		return fmt.Errorf("record extension %s: %w", name, err)
	}
	return nil
}

// Extensions lists the recorded extensions by name.
func (c *Catalog) Extensions(ctx context.Context) ([]Extension, error) {
	rows, err := c.pool.Query(ctx, `SELECT name, schema FROM pgtenant.extensions ORDER BY name`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, fmt.Errorf("list extensions: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Extension, error) {
		var e Extension
		err := r.Scan(&e.Name, &e.Schema)
		return e, err
	})
}
