package move

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// The schema is copied with pg_dump --schema-only (custom format), turned
// into SQL by pg_restore (schemasql.go) and run on the target through pgx in
// two parts:
//   - before the initial copy: everything except the entries below — the
//     schema, tables with their defaults, CHECK/NOT NULL, primary key and unique
//     constraints (logical replication needs the key), sequences and identity,
//     views, functions, types, comments and grants;
//   - after the copy (postDataTypes): secondary indexes, foreign keys and
//     triggers, so the copy writes into bare tables and FK order does not matter
//     (the apply worker does not fire triggers or FK checks anyway).
// Each part runs as one transaction, so it is there entirely or not at all.
// A move of a MoveAll batch takes its schema from the batch's dump of its
// source node (schemacache.go); any other move dumps its own schema.

// postDataTypes are the TOC entry types built after the initial copy.
var postDataTypes = []string{"INDEX", "INDEX ATTACH", "FK CONSTRAINT", "TRIGGER"}

// skippedTypes are TOC entries not restored on the target: publications and
// subscriptions belong to a node, not to the shard (a move's own publication
// may be in the dump when a move is resumed).
var skippedTypes = []string{"PUBLICATION", "SUBSCRIPTION"}

func (m *Mover) binDir() (string, error) {
	if m.cfg.BinDir != "" {
		return m.cfg.BinDir, nil
	}
	return localpg.FindClientBinDir()
}

// dumpSchemas writes a custom-format schema-only dump of schemas to dir and returns its path.
func (m *Mover) dumpSchemas(ctx context.Context, dir, dsn string, schemas []string) (string, error) {
	bin, err := m.binDir()
	if err != nil {
		return "", err
	}
	if m.dumpHook != nil {
		m.dumpHook()
	}
	dump := filepath.Join(dir, "schema.dump")
	args := []string{"--schema-only", "--format=custom", "-f", dump, "-d", dsn}
	for _, s := range schemas {
		// A double-quoted -n pattern matches the name literally.
		args = append(args, "-n", `"`+strings.ReplaceAll(s, `"`, `""`)+`"`)
	}
	if out, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), args...).CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("server version mismatch")) {
			return "", fmt.Errorf("pg_dump of %s: %w: %s (hint: a move needs pg_dump and pg_restore of at least the nodes' PostgreSQL version; set %s to their directory)",
				bin, err, bytes.TrimSpace(out), localpg.EnvClientBin)
		}
		return "", fmt.Errorf("pg_dump: %w: %s", err, bytes.TrimSpace(out))
	}
	return dump, nil
}

// copySchema runs the pre- or post-copy part of the source schema on the
// target, from the batch's dump when it has the schema unchanged, else from
// the move's own dump (made once per process and move: the post-copy part
// comes from the same dump as the pre-copy part).
func (m *Mover) copySchema(ctx context.Context, mv *moveRun, post bool) error {
	if mv.script == nil {
		src, err := m.source(ctx, mv)
		if err != nil {
			return err
		}
		s, err := mv.batch.script(ctx, mv, src)
		if err != nil {
			return err
		}
		if s == nil {
			if s, err = m.dumpScript(ctx, mv.SourceDSN, []string{mv.Schema}); err != nil {
				return err
			}
		}
		if !s.hasSchema(mv.Schema) {
			return fmt.Errorf("the dump of the source has no schema %s", mv.Schema)
		}
		mv.script = s
	}
	dst, err := m.target(ctx, mv)
	if err != nil {
		return err
	}
	local := mv.script.local != ""
	sql, n := mv.script.sqlFor(mv.Schema, post, local, serverVersionNum(dst))
	if n == 0 {
		return nil
	}
	if local {
		// The move's target connection, in one transaction whose settings end with it.
		if err := pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql)
			return err
		}); err != nil {
			return fmt.Errorf("restore the schema on the target: %w", err)
		}
		return nil
	}
	// Its own connection: the dump's session settings stay with it.
	conn, err := connect(ctx, mv.TargetDSN, "target node "+mv.Target)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// One simple-protocol query of many statements runs as one transaction.
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("restore the schema on the target: %w", err)
	}
	return nil
}

// serverVersionNum is conn's server version as server_version_num (150018
// for "15.18 (Debian …)", 0 when unknown).
func serverVersionNum(conn *pgx.Conn) int {
	v := conn.PgConn().ParameterStatus("server_version")
	var major, minor int
	if n, _ := fmt.Sscanf(v, "%d.%d", &major, &minor); n == 0 {
		return 0
	}
	return major*10000 + minor
}

// postObjects counts the schema's secondary indexes, FK constraints and user
// triggers: equal counts on both sides mean the post-copy part was restored.
func postObjects(ctx context.Context, conn *pgx.Conn, schema string) (int, error) {
	var n int
	err := conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		  WHERE n.nspname = $1 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p','u','x')))
		+ (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = $1 AND k.contype = 'f')
		+ (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		  WHERE n.nspname = $1 AND NOT t.tgisinternal AND t.tgname NOT IN ($2, $3))`, schema, captureTrigger, truncateTrigger).Scan(&n)
	return n, err
}

// tables lists the ordinary and partitioned tables of schema, sorted.
func tables(ctx context.Context, conn *pgx.Conn, schema string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return names, nil
}

// schemaExists reports whether schema exists in conn's database.
func schemaExists(ctx context.Context, conn *pgx.Conn, schema string) (bool, error) {
	var ok bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&ok)
	return ok, err
}

// badTables lists the tables logical replication cannot move.
func badTables(ctx context.Context, conn *pgx.Conn, schema string) ([]BadTable, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname,
		CASE WHEN c.relpersistence = 'u' THEN 'unlogged table: not replicated'
		     ELSE 'no primary key or replica identity' END
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' AND (c.relpersistence = 'u' OR NOT (
		  c.relreplident = 'f'
		  OR (c.relreplident = 'd' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
		  OR (c.relreplident = 'i' AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident))))
		ORDER BY c.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("check replica identity: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (BadTable, error) {
		var b BadTable
		err := r.Scan(&b.Name, &b.Reason)
		return b, err
	})
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func ident(parts ...string) string { return pgx.Identifier(parts).Sanitize() }

// isUndefined reports an undefined table or schema (the marker table on a node that never had one).
func isUndefined(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}
