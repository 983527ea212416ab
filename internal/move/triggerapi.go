package move

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// The trigger method's row-image apply and its lock-patient DDL, offered to
// other callers that capture changes with triggers (an import from a legacy
// database without logical replication, internal/importer). A row image is
// a row's text form (ROW::text, as a capture trigger writes NEW::text): read
// back with the target table's row type, so the target table needs the
// source's columns in the source's order.

// UpsertRowSQL is the statement that sets the row of schema.table with the
// key of the row image $1 to that image: an insert, or an update of the
// row with its key (key: the primary key columns; cols: the columns to
// write, generated ones left out).
func UpsertRowSQL(schema, table string, key, cols []string) string {
	return upsertSQL(schema, keyedTable{name: table, key: key, cols: cols})
}

// DeleteRowSQL is the statement that deletes the row of schema.table with
// the key of the row image $1 (a row already gone is no change).
func DeleteRowSQL(schema, table string, key []string) string {
	return deleteSQL(schema, keyedTable{name: table, key: key})
}

// LockedDDL runs ddl in one transaction on conn, retrying for up to a
// minute while writers keep its table locks from being granted within a
// short lock timeout, as the trigger method creates and drops its capture
// triggers: busy writers are never queued behind a DDL waiting for them.
// patient lets every tenth attempt wait past deadlock_timeout (to get past
// autovacuum); a drop that can be redone passes false.
func (m *Mover) LockedDDL(ctx context.Context, conn *pgx.Conn, ddl string, patient bool) error {
	return m.lockedDDLWait(ctx, conn, &moveRun{}, ddl, patient)
}
