package importer

import (
	"context"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
)

// deferredIndexTable on each node records the indexes of shard tables the
// copy dropped before writing their rows: one row per index with the
// statement that builds it again. A table's are built (and their rows
// deleted, each in the build's transaction) after its last unit on the
// node, before it is recorded complete there; a rerun after a kill builds
// what a killed run left recorded. `import finish` drops the table.
const deferredIndexTable = "pgtenant_stream.import_index"

// Building an index once over a table's rows costs a fraction of keeping it
// up to date row by row while they are copied (each row an insertion into
// each B-tree at a random place, and its WAL record): measured on the
// demo's readings (a primary key and a second index), the rows and both
// indexes took 2.5-2.8 times less time built after the COPY than kept
// during it (bench/README.md, "Import copy").
//
// The indexes deferred are those nothing else depends on while the copy
// runs: plain indexes and the indexes of PRIMARY KEY and UNIQUE constraints
// of ordinary tables (not partitioned tables or partitions), unless a
// foreign key references the index (a parent's key stays: its children's
// foreign keys need it) or another object depends on it (a view grouping by
// the key), it is the replica identity or the CLUSTER index,
// it lies in another tablespace, has a comment or a column statistics
// target, or is not valid. Exclusion constraints stay. The statement kept
// is pg_get_indexdef (plain index) or ALTER TABLE … ADD CONSTRAINT name
// pg_get_constraintdef (key), so name, columns, INCLUDE, WITH options,
// NULLS NOT DISTINCT, partial predicates and DEFERRABLE come back as they
// were. A duplicate that a unique index would have refused row by row is
// refused by the build (23505), before the table is recorded complete.
const deferrableIndexes = `SELECT n.nspname, ic.relname, CASE WHEN k.oid IS NULL THEN 'DROP INDEX ' || i.indexrelid::regclass::text
		ELSE 'ALTER TABLE ' || c.oid::regclass::text || ' DROP CONSTRAINT ' || quote_ident(k.conname) END,
	CASE WHEN k.oid IS NULL THEN pg_get_indexdef(i.indexrelid)
		ELSE 'ALTER TABLE ' || c.oid::regclass::text || ' ADD CONSTRAINT ' || quote_ident(k.conname) || ' ' || pg_get_constraintdef(k.oid) END
	FROM pg_index i
	JOIN pg_class ic ON ic.oid = i.indexrelid
	JOIN pg_class c ON c.oid = i.indrelid
	JOIN pg_namespace n ON n.oid = c.relnamespace
	LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = c.oid AND k.contype IN ('p', 'u', 'x')
	WHERE n.nspname = ANY ($1) AND c.relname = $2 AND c.relkind = 'r' AND NOT c.relispartition
		AND i.indisvalid AND i.indisready AND i.indislive AND NOT i.indisreplident AND NOT i.indisclustered
		AND ic.reltablespace = 0 AND (k.oid IS NULL OR k.contype <> 'x')
		AND NOT EXISTS (SELECT FROM pg_constraint f WHERE f.contype = 'f' AND f.conindid = i.indexrelid)
		AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.deptype = 'n' AND (d.refclassid = 'pg_class'::regclass AND d.refobjid = i.indexrelid
			OR d.refclassid = 'pg_constraint'::regclass AND d.refobjid = k.oid))
		AND NOT EXISTS (SELECT FROM pg_description d WHERE d.objoid = i.indexrelid OR d.objoid = k.oid)
		AND NOT EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0)
	ORDER BY 1, 2`

// ensureDeferredIndexTable creates the node's record of deferred indexes.
func ensureDeferredIndexTable(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+deferredIndexTable+` (schema_name text NOT NULL, tbl text NOT NULL,
		index_name text NOT NULL, create_sql text NOT NULL, PRIMARY KEY (schema_name, index_name))`); err != nil {
		return fmt.Errorf("create %s: %w", deferredIndexTable, err)
	}
	return nil
}

// deferIndexes drops, on every node where table is to be copied, the
// indexes of its shard tables the copy builds afterwards, recording each
// first (in the same transaction per node).
func (cs *copyState) deferIndexes(ctx context.Context, table string, nodes map[string]bool) error {
	for _, name := range sortedKeys(nodes) {
		n := cs.nodes[name]
		err := pgx.BeginFunc(ctx, n.conn, func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, deferrableIndexes, n.schemas, table)
			if err != nil {
				return err
			}
			type index struct{ schema, name, drop, create string }
			var idx []index
			var x index
			if _, err := pgx.ForEachRow(rows, []any{&x.schema, &x.name, &x.drop, &x.create}, func() error { idx = append(idx, x); return nil }); err != nil {
				return err
			}
			for _, x := range idx {
				if _, err := tx.Exec(ctx, `INSERT INTO `+deferredIndexTable+` (schema_name, tbl, index_name, create_sql) VALUES ($1, $2, $3, $4)
					ON CONFLICT (schema_name, index_name) DO UPDATE SET tbl = excluded.tbl, create_sql = excluded.create_sql`, x.schema, table, x.name, x.create); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, x.drop); err != nil {
					return fmt.Errorf("%s: %w", x.drop, err)
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("node %s: drop the indexes of %s for the copy: %w", name, table, err)
		}
	}
	return nil
}

// buildJob is one deferred index to build on a node.
type buildJob struct {
	node, schema, table, index, create string
}

// deferredIndexes lists the indexes of tables recorded deferred on the
// nodes, each node's largest tables first, the nodes taking turns (so
// that every node builds at once).
func (cs *copyState) deferredIndexes(ctx context.Context, tables []string) ([]buildJob, error) {
	var jobs []buildJob
	var turn []int // each job's place among its node's
	for _, name := range sortedKeys(cs.nodes) {
		n := cs.nodes[name]
		rows, err := n.conn.Query(ctx, `SELECT schema_name, tbl, index_name, create_sql FROM `+deferredIndexTable+` WHERE tbl = ANY ($1)
			ORDER BY pg_relation_size(to_regclass(quote_ident(schema_name) || '.' || quote_ident(tbl))) DESC, schema_name, index_name`, tables)
		if err != nil {
			return nil, fmt.Errorf("node %s: read %s: %w", name, deferredIndexTable, err)
		}
		j, k := buildJob{node: name}, 0
		if _, err := pgx.ForEachRow(rows, []any{&j.schema, &j.table, &j.index, &j.create}, func() error {
			jobs, turn = append(jobs, j), append(turn, k)
			k++
			return nil
		}); err != nil {
			return nil, fmt.Errorf("node %s: read %s: %w", name, deferredIndexTable, err)
		}
	}
	order := make([]int, len(jobs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return turn[order[a]] < turn[order[b]] })
	out := make([]buildJob, len(jobs))
	for i, k := range order {
		out[i] = jobs[k]
	}
	return out, nil
}

// buildIndexes builds the deferred indexes of tables on the nodes, each in
// one transaction that deletes its record, the workers' node connections
// building at once (a node's indexes by several of them).
func (cs *copyState) buildIndexes(ctx context.Context, workers []*copyWorker, tables []string) error {
	jobs, err := cs.deferredIndexes(ctx, tables)
	if err != nil || len(jobs) == 0 {
		return err
	}
	return runJobs(ctx, workers, jobs, func(ctx context.Context, w *copyWorker, j buildJob) error { return w.build(ctx, j) })
}

// build builds one deferred index and deletes its record, in one
// transaction on the worker's connection to the node.
func (w *copyWorker) build(ctx context.Context, j buildJob) error {
	conn := w.nodes[j.node]
	if conn == nil {
		var err error
		if conn, err = w.connectNode(ctx, j.node); err != nil {
			return err
		}
		w.nodes[j.node] = conn
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, j.create); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM `+deferredIndexTable+` WHERE schema_name = $1 AND index_name = $2`, j.schema, j.index)
		return err
	})
	if err != nil {
		w.close()
		return fmt.Errorf("node %s: build index %s of %s.%s after the copy (%s): %w", j.node, j.index, j.schema, j.table, j.create, err)
	}
	return nil
}
