package importer

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// Rejected changes of the trigger method. The queue's follower treats a
// change it cannot route as the logical stream does (reject.go): a row
// without a tenant, or of a tenant not registered, or a child of a
// rejected parent row, is written into pgtenant.import_rejects with the
// same table, key (the primary key's values as JSON), tenant, reason and
// row, and the follower goes on; import status lists it, cutover --all
// and finish refuse until it is resolved or dropped (--accept-rejects).
// The position of a trigger method's reject is its queue entry's id,
// written as an LSN (queueLSN): ids grow with the changes of one row (its
// row lock orders them), so "a later change of the row" reads the same.
// A round replayed after a kill writes the same records again (idempotent).

// queueLSN is queue entry id as the position of a reject.
func queueLSN(id int64) stream.LSN { return stream.LSN(uint64(id)) }

// rowKey is the key of a row image of t (its primary key's values) as
// JSON, as the logical stream writes it (rejectKey).
func (t *trigTable) rowKey(fields []*string) string {
	m := map[string]any{}
	for _, k := range t.key {
		m[k] = nil
		for i, c := range t.all {
			if c == k && i < len(fields) && fields[i] != nil {
				m[k] = *fields[i]
			}
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// rowJSON is a row image of t as a JSON object of its columns' text values.
func (t *trigTable) rowJSON(fields []*string) []byte {
	m := map[string]any{}
	for i, c := range t.all {
		if i < len(fields) && fields[i] != nil {
			m[c] = *fields[i]
		} else {
			m[c] = nil
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// loadRejects reads, once, the rows whose rejected change is not resolved.
func (a *qapplier) loadRejects(ctx context.Context) error {
	if a.rejected != nil {
		return nil
	}
	rows, err := a.im.cat.Pool().Query(ctx, `SELECT tbl, row_key FROM pgtenant.import_rejects WHERE resolved_lsn IS NULL`)
	if err != nil {
		return fmt.Errorf("read the rejected changes: %w", err)
	}
	m := map[[2]string]bool{}
	var tbl, key string
	if _, err := pgx.ForEachRow(rows, []any{&tbl, &key}, func() error { m[[2]string{tbl, key}] = true; return nil }); err != nil {
		return fmt.Errorf("read the rejected changes: %w", err)
	}
	a.rejected = m
	return nil
}

// wasRejected reports whether the row of image fields has a reject not
// resolved.
func (a *qapplier) wasRejected(t *trigTable, fields []*string) bool {
	return len(a.rejected) > 0 && a.rejected[[2]string{t.rule.Name, t.rowKey(fields)}]
}

// reject records queue entry e (new row image fields) as rejected; when
// the row was rejected before (was; its image before the change), that
// reject is superseded by this one.
func (a *qapplier) reject(ctx context.Context, e entry, t *trigTable, fields []*string, was bool, before []*string, tenant, reason string) error {
	if was {
		if err := a.resolve(ctx, e, t, before, "superseded by a later change of the row, rejected too"); err != nil {
			return err
		}
	}
	key := t.rowKey(fields)
	if err := a.im.recordReject(ctx, t.rule.Name, key, queueLSN(e.id), tenant, reason, t.rowJSON(fields)); err != nil {
		return err
	}
	a.rejected[[2]string{t.rule.Name, key}] = true
	a.Rejected.Add(1)
	a.Skipped.Add(1)
	return nil
}

// resolve marks the reject of the row of image fields resolved at e.
func (a *qapplier) resolve(ctx context.Context, e entry, t *trigTable, fields []*string, how string) error {
	key := t.rowKey(fields)
	if err := a.im.resolveReject(ctx, t.rule.Name, key, queueLSN(e.id), how); err != nil {
		return err
	}
	delete(a.rejected, [2]string{t.rule.Name, key})
	return nil
}
