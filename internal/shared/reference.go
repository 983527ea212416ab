package shared

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// writeSetting is the setting a transaction sets (locally) to write
// reference tables; the guard trigger refuses writes without it.
const writeSetting = "pgtenant.reference_write"

// guardName names the guard function and its triggers.
const guardName = "pgtenant_reference_guard"

// versionTable records the reference migrations applied on a node, in the
// shared schema.
const versionTable = "pgtenant_reference_versions"

// ErrNotReference is returned when a table named for reference load is not
// a reference table.
var ErrNotReference = errors.New("not a reference table")

// Migration is one reference migration file.
type Migration struct {
	Version int64
	Name    string // file name
	SQL     string // the Up part
}

var fileRE = regexp.MustCompile(`^(\d+)_.+\.sql$`)

// ReadMigrations reads the reference migrations at the root of fsys: files
// named VERSION_name.sql, in goose's format (only the part after
// "-- +goose Up" and before "-- +goose Down" is applied) or plain SQL,
// sorted by version.
func ReadMigrations(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read reference migrations: %w", err)
	}
	var ms []Migration
	seen := map[int64]string{}
	for _, e := range entries {
		m := fileRE.FindStringSubmatch(e.Name())
		if e.IsDir() || m == nil {
			continue
		}
		v, err := strconv.ParseInt(m[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("reference migration %s: version: %w", e.Name(), err)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("reference migrations %s and %s have the same version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read reference migration: %w", err)
		}
		ms = append(ms, Migration{Version: v, Name: e.Name(), SQL: upPart(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	return ms, nil
}

// upPart returns a goose file's Up section, or the whole file.
func upPart(b []byte) string {
	up := []byte("-- +goose Up")
	if i := bytes.Index(b, up); i >= 0 {
		b = b[i+len(up):]
		if j := bytes.Index(b, []byte("-- +goose Down")); j >= 0 {
			b = b[:j]
		}
	}
	return string(b)
}

// MigrateResult is what Migrate did on one node.
type MigrateResult struct {
	Node    string
	Applied []string // file names, in order
}

// Migrate applies the reference migrations not yet applied on every node,
// each in one transaction with search_path set to the shared schema and
// reference writes allowed. Every table a migration creates in the shared
// schema becomes a reference table (its writes are guarded). A node that
// fails stops at its last whole migration; the others go on.
func Migrate(ctx context.Context, nodes []Node, schema string, ms []Migration) ([]MigrateResult, error) {
	schema = schemaOr(schema)
	res := make([]MigrateResult, len(nodes))
	idx := map[string]int{}
	for i, n := range nodes {
		res[i].Node = n.Name
		idx[n.Name] = i
	}
	err := fanOut(ctx, nodes, func(ctx context.Context, c *pgx.Conn, n Node) error {
		if err := prepareNode(ctx, c, schema); err != nil {
			return err
		}
		for _, m := range ms {
			applied := false
			err := writeTx(ctx, c, schema, func(tx pgx.Tx) error {
				var done bool
				if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT FROM "+pgx.Identifier{schema, versionTable}.Sanitize()+" WHERE version = $1)", m.Version).Scan(&done); err != nil {
					return fmt.Errorf("read applied versions: %w", err)
				}
				if done {
					return nil
				}
				if _, err := tx.Exec(ctx, m.SQL, pgx.QueryExecModeSimpleProtocol); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "INSERT INTO "+pgx.Identifier{schema, versionTable}.Sanitize()+" (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
					return fmt.Errorf("record version: %w", err)
				}
				applied = true
				return nil
			})
			if err != nil {
				return fmt.Errorf("reference migration %s: %w", m.Name, err)
			}
			if applied {
				res[idx[n.Name]].Applied = append(res[idx[n.Name]].Applied, m.Name)
			}
		}
		return nil
	})
	return res, err
}

// Pending lists, per node, the reference migrations of ms not applied there.
func Pending(ctx context.Context, nodes []Node, schema string, ms []Migration) (map[string][]string, error) {
	schema = schemaOr(schema)
	out := map[string][]string{}
	var mu sync.Mutex
	err := fanOut(ctx, nodes, func(ctx context.Context, c *pgx.Conn, n Node) error {
		have := map[int64]bool{}
		var exists bool
		if err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", pgx.Identifier{schema, versionTable}.Sanitize()).Scan(&exists); err != nil {
			return err
		}
		if exists {
			rows, err := c.Query(ctx, "SELECT version FROM "+pgx.Identifier{schema, versionTable}.Sanitize())
			if err != nil {
				return err
			}
			vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				return err
			}
			for _, v := range vs {
				have[v] = true
			}
		}
		var missing []string
		for _, m := range ms {
			if !have[m.Version] {
				missing = append(missing, m.Name)
			}
		}
		mu.Lock()
		out[n.Name] = missing
		mu.Unlock()
		return nil
	})
	return out, err
}

// Exec runs sql (one or more statements) on every node, each in one
// transaction with search_path set to the shared schema and reference
// writes allowed: to change reference rows everywhere. Tables it creates
// become reference tables.
func Exec(ctx context.Context, nodes []Node, schema, sql string) error {
	schema = schemaOr(schema)
	return fanOut(ctx, nodes, func(ctx context.Context, c *pgx.Conn, n Node) error {
		if err := prepareNode(ctx, c, schema); err != nil {
			return err
		}
		return writeTx(ctx, c, schema, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol)
			return err
		})
	})
}

// LoadOptions says how Load reads its rows.
type LoadOptions struct {
	// Replace makes the table hold exactly the file's rows: rows whose
	// primary key is not in the file are deleted, the others updated or
	// added (so that tenants' rows referring to kept rows stay valid).
	// Without a primary key the table is emptied first. Without Replace
	// rows are added.
	Replace bool
	// Header: the CSV's first line names the columns and is skipped. The
	// columns are in the table's order either way.
	Header bool
}

// Load copies CSV rows into reference table table (in the shared schema) on
// every node, each node in one transaction.
func Load(ctx context.Context, nodes []Node, schema, table string, csv []byte, opts LoadOptions) error {
	schema = schemaOr(schema)
	qt := pgx.Identifier{schema, table}.Sanitize()
	return fanOut(ctx, nodes, func(ctx context.Context, c *pgx.Conn, n Node) error {
		var guarded bool
		err := c.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)`, qt, guardName).Scan(&guarded)
		if err != nil {
			return fmt.Errorf("look up table %s: %w", qt, err)
		}
		if !guarded {
			return fmt.Errorf("table %s: %w (create it in a reference migration: pgtenant reference migrate --dir DIR)", qt, ErrNotReference)
		}
		return writeTx(ctx, c, schema, func(tx pgx.Tx) error {
			target := qt
			if opts.Replace {
				target = "pgtenant_reference_load"
				if _, err := tx.Exec(ctx, "CREATE TEMP TABLE "+target+" (LIKE "+qt+") ON COMMIT DROP"); err != nil {
					return fmt.Errorf("stage rows: %w", err)
				}
			}
			copySQL := "COPY " + target + " FROM STDIN (FORMAT csv"
			if opts.Header {
				copySQL += ", HEADER true"
			}
			copySQL += ")"
			if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(csv), copySQL); err != nil {
				return fmt.Errorf("copy into %s: %w", qt, err)
			}
			if opts.Replace {
				return replaceRows(ctx, tx, qt, target)
			}
			return nil
		})
	})
}

// replaceRows makes table hold exactly the rows of staged: by primary key
// when it has one (delete the missing, upsert the rest), else by emptying
// it first.
func replaceRows(ctx context.Context, tx pgx.Tx, table, staged string) error {
	rows, err := tx.Query(ctx, `SELECT a.attname, coalesce(a.attnum = ANY (i.indkey), false)
		FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, table)
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", table, err)
	}
	var cols, keys, sets []string
	var name string
	var key bool
	_, err = pgx.ForEachRow(rows, []any{&name, &key}, func() error {
		q := pgx.Identifier{name}.Sanitize()
		cols = append(cols, q)
		if key {
			keys = append(keys, q)
		} else {
			sets = append(sets, q+" = excluded."+q)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read columns of %s: %w", table, err)
	}
	if len(keys) == 0 {
		if _, err := tx.Exec(ctx, "DELETE FROM "+table); err != nil {
			return fmt.Errorf("empty %s: %w", table, err)
		}
		_, err := tx.Exec(ctx, "INSERT INTO "+table+" SELECT * FROM "+staged)
		return err
	}
	k := strings.Join(keys, ", ")
	if _, err := tx.Exec(ctx, "DELETE FROM "+table+" WHERE ("+k+") NOT IN (SELECT "+k+" FROM "+staged+")"); err != nil {
		return fmt.Errorf("delete rows not in the file from %s: %w", table, err)
	}
	action := "NOTHING"
	if len(sets) > 0 {
		action = "UPDATE SET " + strings.Join(sets, ", ")
	}
	if _, err := tx.Exec(ctx, "INSERT INTO "+table+" ("+strings.Join(cols, ", ")+") SELECT "+strings.Join(cols, ", ")+" FROM "+staged+
		" ON CONFLICT ("+k+") DO "+action); err != nil {
		return fmt.Errorf("write rows into %s: %w", table, err)
	}
	return nil
}

// prepareNode creates the shared schema, the guard function and the
// version table on a node if they are missing.
func prepareNode(ctx context.Context, c *pgx.Conn, schema string) error {
	if err := ensureSchema(ctx, c, schema); err != nil {
		return err
	}
	s := pgx.Identifier{schema}.Sanitize()
	hint := "Change reference rows on every node with pgtenant reference exec or pgtenant reference load, or in a reference migration (pgtenant reference migrate)."
	_, err := c.Exec(ctx, `CREATE OR REPLACE FUNCTION `+s+`.`+guardName+`() RETURNS trigger LANGUAGE plpgsql AS $guard$
BEGIN
	IF coalesce(current_setting('`+writeSetting+`', true), '') <> 'on' THEN
		RAISE EXCEPTION '%.% is a reference table: it is written only by pgtenant on every node', TG_TABLE_SCHEMA, TG_TABLE_NAME
			USING ERRCODE = '42501', HINT = '`+hint+`';
	END IF;
	RETURN NULL;
END
$guard$;
CREATE TABLE IF NOT EXISTS `+s+`.`+versionTable+` (
	version    bigint PRIMARY KEY,
	name       text NOT NULL,
	applied_at timestamptz NOT NULL DEFAULT now()
)`, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return fmt.Errorf("prepare shared schema %s: %w", schema, err)
	}
	return nil
}

// writeTx runs f in a transaction that may write reference tables, under a
// per-node lock, and guards every table f created in the shared schema.
func writeTx(ctx context.Context, c *pgx.Conn, schema string, f func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('pgtenant reference ' || $1, 0)),
			set_config('search_path', $2, true), set_config('`+writeSetting+`', 'on', true)`, schema, pgx.Identifier{schema}.Sanitize()); err != nil {
			return fmt.Errorf("start: %w", err)
		}
		before, err := tables(ctx, tx, schema)
		if err != nil {
			return err
		}
		if err := f(tx); err != nil {
			return err
		}
		after, err := tables(ctx, tx, schema)
		if err != nil {
			return err
		}
		for t := range after {
			if before[t] {
				continue
			}
			if _, err := tx.Exec(ctx, "CREATE TRIGGER "+guardName+" BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "+pgx.Identifier{schema, t}.Sanitize()+
				" FOR EACH STATEMENT EXECUTE FUNCTION "+pgx.Identifier{schema, guardName}.Sanitize()+"()"); err != nil {
				return fmt.Errorf("guard reference table %s: %w", t, err)
			}
		}
		return nil
	})
}

// tables returns the ordinary and partitioned tables of schema that are not
// an extension's and not the version table.
func tables(ctx context.Context, tx pgx.Tx, schema string) (map[string]bool, error) {
	rows, err := tx.Query(ctx, `SELECT c.relname FROM pg_catalog.pg_class c
		WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $1) AND c.relkind IN ('r', 'p')
		AND c.relname <> $2
		AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
		ORDER BY 1`, schema, versionTable)
	if err != nil {
		return nil, fmt.Errorf("list tables of %s: %w", schema, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list tables of %s: %w", schema, err)
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return set, nil
}
