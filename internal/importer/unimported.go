package importer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// Tables created on the legacy database after import init. import init and
// import start refuse a table of the legacy schema without a rule in the
// tables registry, before anything changes. A table created later (by a
// migration run on the legacy database, by hand) is in no publication and
// was not copied: nothing of it reaches the shards. A table cannot join an
// import once import start created its slot (its rows would need a copy at
// the slot's snapshot, which is gone). So status, verify, cutover and
// finish name every such table (in the legacy schema, neither imported nor
// excluded with `import exclude`), and cutover --all and finish refuse
// while one is left (UnimportedError, 55000). A table registered late
// (pgtenant table set) but not in the publication counts as not imported
// too. (With --method trigger only unregistered tables are looked for.)
//
// With --schema-per-tenant the tables of the tenant schemas are the
// import's: a table of a tenant schema that is not in the import's
// publication (before import start: not among the template schema's
// tables) is named with the tenant schemas that hold it, e.g.
// "notes (in 2 tenant schema(s): acme, globex)"; `import exclude notes`
// leaves it out in every tenant schema.

// ErrUnimported: legacy tables are neither imported nor excluded.
var ErrUnimported = coded("55000", "tables of the legacy database are not in the import")

// UnimportedError names the legacy tables that stop a cutover or a finish.
type UnimportedError struct {
	Op     string
	Tables []string
}

func (e *UnimportedError) Error() string {
	return e.Op + ": " + withSQLState("55000", fmt.Sprintf("table(s) %s of the legacy database are not in the import (created after import init, or registered after import start): their rows would stay on the legacy database only"+
		"\n  hint: a table cannot join a running import; leave it out on purpose with `pgtenant import exclude TABLE` (and move its rows yourself after import finish), "+
		"or drop it on the legacy database if it is a mistake", strings.Join(e.Tables, ", ")))
}

// SQLState is 55000 (object_not_in_prerequisite_state).
func (e *UnimportedError) SQLState() string { return "55000" }

func (e *UnimportedError) Unwrap() error { return ErrUnimported }

// excluded reads the tables left out of the import on purpose.
func (im *Importer) excluded(ctx context.Context) ([]string, error) {
	var ex []string
	err := im.cat.Pool().QueryRow(ctx, `SELECT excluded_tables FROM pgtenant.imports WHERE state <> 'finished'`).Scan(&ex)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoImport
	}
	if err != nil {
		return nil, fmt.Errorf("read the tables excluded from the import: %w", err)
	}
	return ex, nil
}

// Exclude leaves tables of the legacy schema out of the import on purpose:
// their rows stay on the legacy database only, and cutover and finish no
// longer name them.
func (im *Importer) Exclude(ctx context.Context, names []string) error {
	for _, n := range names {
		if !tables.ValidIdent(n) {
			return fmt.Errorf("import exclude: %q is not a table name", n)
		}
	}
	tag, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET excluded_tables = ARRAY(SELECT DISTINCT unnest(excluded_tables || $1::text[]) ORDER BY 1), updated_at = now()
		WHERE state <> 'finished'`, names)
	if err != nil {
		return fmt.Errorf("import exclude: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNoImport
	}
	im.logger.Warn("import: tables excluded on purpose; their rows stay on the legacy database only", "tables", names)
	return nil
}

// Unimported returns the tables of the legacy schema that are neither in
// the import nor excluded, sorted.
func (im *Importer) Unimported(ctx context.Context) ([]string, error) {
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	return im.unimported(ctx, legacy, imp)
}

func (im *Importer) unimported(ctx context.Context, legacy *pgx.Conn, imp *Import) ([]string, error) {
	if ap, err := im.apartmentOf(ctx); err != nil || ap != nil {
		if err != nil {
			return nil, err
		}
		return im.unimportedApartment(ctx, legacy, imp, ap)
	}
	app, err := tables.AppTables(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, err
	}
	all, err := tables.New(im.cat.Pool()).List(ctx)
	if err != nil {
		return nil, err
	}
	ex, err := im.excluded(ctx)
	if err != nil {
		return nil, err
	}
	out := tables.Unregistered(app, all)
	if imp.Method != MethodTrigger && imp.Publication != "" {
		// Registered tenant tables missing from the publication: registered
		// after import start.
		rows, err := legacy.Query(ctx, `SELECT tablename FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2`, imp.Publication, imp.LegacySchema)
		if err != nil {
			return nil, fmt.Errorf("read publication %s: %w", imp.Publication, err)
		}
		published, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("read publication %s: %w", imp.Publication, err)
		}
		present := map[string]bool{}
		for _, n := range app {
			present[n] = true
		}
		for _, t := range all {
			if t.Kind != tables.KindShared && present[t.Name] && !slices.Contains(published, t.Name) {
				out = append(out, t.Name)
			}
		}
	}
	out = slices.DeleteFunc(out, func(n string) bool { return slices.Contains(ex, n) })
	slices.Sort(out)
	return slices.Compact(out), nil
}

// CheckUnimported returns an UnimportedError naming the legacy tables
// neither imported nor excluded, if any.
func (im *Importer) CheckUnimported(ctx context.Context, op string) error {
	ts, err := im.Unimported(ctx)
	if err != nil || len(ts) == 0 {
		return err
	}
	return &UnimportedError{Op: op, Tables: ts}
}

// unimportedApartment lists the tables of the tenant schemas of a
// schema-per-tenant import that are not in it (see the comment at the top),
// each with the schemas that hold it, the excluded ones left out.
func (im *Importer) unimportedApartment(ctx context.Context, legacy *pgx.Conn, imp *Import, ap *apartment) ([]string, error) {
	ex, err := im.excluded(ctx)
	if err != nil {
		return nil, err
	}
	template := []string{} // arrays, never NULL: = ANY(NULL) holds for no row
	if ex == nil {
		ex = []string{}
	}
	if imp.Publication == "" { // before import start: the template's tables are the import's
		if template, err = tables.AppTables(ctx, legacy, ap.template); err != nil {
			return nil, err
		}
	}
	rows, err := legacy.Query(ctx, `SELECT c.relname::text, array_agg(n.nspname::text ORDER BY n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = ANY($1) AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'goose_db_version'
		AND NOT c.relname = ANY($4)
		AND CASE WHEN $2 = '' THEN NOT c.relname = ANY($3)
			ELSE NOT EXISTS (SELECT FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE p.pubname = $2 AND pr.prrelid = c.oid) END
		GROUP BY c.relname ORDER BY 1`, ap.sortedSchemas(), imp.Publication, template, ex)
	if err != nil {
		return nil, fmt.Errorf("look for tables of the tenant schemas not in the import: %w", err)
	}
	var out []string
	var name string
	var in []string
	if _, err := pgx.ForEachRow(rows, []any{&name, &in}, func() error {
		out = append(out, fmt.Sprintf("%s (in %d tenant schema(s): %s)", name, len(in), quoteAll(first(in, 3))+more(len(in), 3)))
		return nil
	}); err != nil {
		return nil, fmt.Errorf("look for tables of the tenant schemas not in the import: %w", err)
	}
	return out, nil
}

// more is ", and N more" for a list of n items of which shown are named.
func more(n, shown int) string {
	if n <= shown {
		return ""
	}
	return fmt.Sprintf(", and %d more", n-shown)
}
