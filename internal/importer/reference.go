package importer

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/shared"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// copyReference loads the reference tables' rows, read at snapshot, into
// the shared schema of every node (shared.Load, replacing what is there).
// Reference tables are copied once: later changes are made with
// `pgtenant reference load` or `reference exec`.
func (im *Importer) copyReference(ctx context.Context, imp *Import, snapshot string, ts []tables.Table) ([]string, error) {
	if len(ts) == 0 {
		return nil, nil
	}
	nodes, err := im.cat.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	targets := make([]shared.Node, len(nodes))
	for i, n := range nodes {
		dsn, err := im.cat.ResolveDSN(n.DSN)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		targets[i] = shared.Node{Name: n.Name, DSN: dsn}
	}
	conn, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer conn.Close(context.Background())
	source := imp.LegacySchema
	if ap, err := im.apartmentOf(ctx); err != nil {
		return nil, err
	} else if ap != nil {
		source = "public" // a schema per tenant: public holds the shared tables
	}
	var names []string
	err = pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+strings.ReplaceAll(snapshot, "'", "''")+`'`); err != nil {
			return fmt.Errorf("import the slot's snapshot: %w", err)
		}
		for _, t := range ts {
			var buf bytes.Buffer
			if _, err := tx.Conn().PgConn().CopyTo(ctx, &buf, "COPY "+pgx.Identifier{source, t.Name}.Sanitize()+" TO STDOUT (FORMAT csv)"); err != nil {
				return fmt.Errorf("read reference table %s: %w", t.Name, err)
			}
			if err := shared.Load(ctx, targets, im.sharedSchema, t.Name, buf.Bytes(), shared.LoadOptions{Replace: true}); err != nil {
				return fmt.Errorf("load reference table %s: %w", t.Name, err)
			}
			names = append(names, t.Name)
		}
		return nil
	})
	return names, err
}
