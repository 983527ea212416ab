package move

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// The schema is copied with pg_dump --schema-only (custom format) and
// pg_restore in two parts, split with pg_restore -l / -L:
//   - before the initial copy: everything except the entries below — the
//     schema, tables with their defaults, CHECK/NOT NULL, primary key and unique
//     constraints (logical replication needs the key), sequences and identity,
//     views, functions, types, comments and grants;
//   - after the copy (postDataTypes): secondary indexes, foreign keys and
//     triggers, so the copy writes into bare tables and FK order does not matter
//     (the apply worker does not fire triggers or FK checks anyway).
// Each part is restored with --single-transaction, so it is there entirely or not at all.

// postDataTypes are the pg_restore TOC entry types built after the initial copy.
var postDataTypes = []string{"INDEX", "INDEX ATTACH", "FK CONSTRAINT", "TRIGGER"}

func (m *Mover) binDir() (string, error) {
	if m.cfg.BinDir != "" {
		return m.cfg.BinDir, nil
	}
	return localpg.FindClientBinDir()
}

// dumpSchema writes a custom-format schema-only dump of schema to dir and
// returns its path and its TOC split into the two restore lists.
func (m *Mover) dumpSchema(ctx context.Context, dir, dsn, schema string) (dump, preList, postList string, err error) {
	bin, err := m.binDir()
	if err != nil {
		return "", "", "", err
	}
	dump = filepath.Join(dir, "schema.dump")
	// A double-quoted -n pattern matches the name literally.
	if out, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), "--schema-only", "--format=custom",
		"-n", `"`+strings.ReplaceAll(schema, `"`, `""`)+`"`, "-f", dump, "-d", dsn).CombinedOutput(); err != nil {
		if bytes.Contains(out, []byte("server version mismatch")) {
			return "", "", "", fmt.Errorf("pg_dump of %s: %w: %s (hint: a move needs pg_dump and pg_restore of at least the nodes' PostgreSQL version; set %s to their directory)",
				bin, err, bytes.TrimSpace(out), localpg.EnvClientBin)
		}
		return "", "", "", fmt.Errorf("pg_dump: %w: %s", err, bytes.TrimSpace(out))
	}
	toc, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_restore"), "-l", dump).Output()
	if err != nil {
		return "", "", "", fmt.Errorf("pg_restore -l: %w", err)
	}
	var pre, post strings.Builder
	for _, line := range strings.Split(string(toc), "\n") {
		if line == "" || strings.HasPrefix(line, ";") {
			continue
		}
		if isSkipped(line) {
			continue
		}
		if isPostData(line) {
			post.WriteString(line + "\n")
		} else {
			pre.WriteString(line + "\n")
		}
	}
	preList, postList = filepath.Join(dir, "pre.list"), filepath.Join(dir, "post.list")
	if err := os.WriteFile(preList, []byte(pre.String()), 0o600); err != nil {
		return "", "", "", err
	}
	if err := os.WriteFile(postList, []byte(post.String()), 0o600); err != nil {
		return "", "", "", err
	}
	return dump, preList, postList, nil
}

// skippedTypes are TOC entries not restored on the target: publications and
// subscriptions belong to a node, not to the shard (a move's own publication
// may be in the dump when a move is resumed).
var skippedTypes = []string{"PUBLICATION", "SUBSCRIPTION"}

func isSkipped(line string) bool {
	// A trigger-method move's capture triggers belong to the move, not to the shard.
	return tocTypeIn(line, skippedTypes) || (tocTypeIn(line, []string{"TRIGGER"}) && strings.Contains(line, " "+captureTrigger))
}

// isPostData reports whether a pg_restore -l line ("123; 1259 16390 INDEX s name owner") is built after the copy.
func isPostData(line string) bool { return tocTypeIn(line, postDataTypes) }

// tocTypeIn reports whether the entry's type (after "id; catalog-oid oid") starts with one of types.
func tocTypeIn(line string, types []string) bool {
	_, rest, ok := strings.Cut(line, ";")
	if !ok {
		return false
	}
	f := strings.Fields(rest)
	if len(f) < 3 {
		return false
	}
	typ := strings.Join(f[2:], " ")
	for _, t := range types {
		if strings.HasPrefix(typ, t+" ") {
			return true
		}
	}
	return false
}

// restore restores the entries of list from dump into the database at dsn in one transaction.
func (m *Mover) restore(ctx context.Context, dump, list, dsn string) error {
	bin, err := m.binDir()
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, filepath.Join(bin, "pg_restore"), "--exit-on-error", "--single-transaction",
		"-L", list, "-d", dsn, dump).CombinedOutput(); err != nil {
		return fmt.Errorf("pg_restore: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// schemaDump is a move's schema-only dump of the source and its TOC split
// in two restore lists, made once per process and move (the post-copy part
// is restored from the same dump as the pre-copy part).
type schemaDump struct {
	dir, dump, pre, post string
}

func (d *schemaDump) remove() {
	if d != nil {
		os.RemoveAll(d.dir)
	}
}

// copySchema restores the pre- or post-copy part of the source schema on the target.
func (m *Mover) copySchema(ctx context.Context, mv *moveRun, post bool) error {
	if mv.dump == nil {
		dir, err := os.MkdirTemp("", "pgtenant-move-")
		if err != nil {
			return fmt.Errorf("temp dir: %w", err)
		}
		dump, pre, postList, err := m.dumpSchema(ctx, dir, mv.SourceDSN, mv.Schema)
		if err != nil {
			os.RemoveAll(dir)
			return err
		}
		mv.dump = &schemaDump{dir: dir, dump: dump, pre: pre, post: postList}
	}
	list := mv.dump.pre
	if post {
		list = mv.dump.post
	}
	return m.restore(ctx, mv.dump.dump, list, mv.TargetDSN)
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
