package importer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// BaselineOptions say where Baseline writes its migration files.
type BaselineOptions struct {
	// Dir gets the shards' baseline migration (00001_legacy_baseline.sql).
	Dir string
	// ReferenceDir gets the reference tables' migration
	// (00001_legacy_reference.sql); "" means Dir/../reference.
	ReferenceDir string
	// Force overwrites existing files.
	Force bool
	// BinDir holds pg_dump; "" means localpg.FindBinDir.
	BinDir string
}

// BaselineResult names the files written and the tables in each.
type BaselineResult struct {
	File, ReferenceFile string
	Tables, Reference   []string
}

// Baseline file names.
const (
	BaselineFile  = "00001_legacy_baseline.sql"
	ReferenceFile = "00001_legacy_reference.sql"
)

// ErrFileExists: a baseline file is there already.
var ErrFileExists = coded("58P02", "the file exists; pass --force to overwrite it")

// Baseline writes the legacy tables' definitions (pg_dump --schema-only,
// without owners, grants or the schema's name) as migration files: the
// tenant and child tables as the shards' first migration, the reference
// tables as a reference migration for the shared schema of every node.
// They are files, not applied here: they are the app's migrations from now
// on, to be read, then applied with `pgtenant reference migrate` and
// `pgtenant migrate up` like any other.
func (im *Importer) Baseline(ctx context.Context, opts BaselineOptions) (*BaselineResult, error) {
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	if opts.ReferenceDir == "" {
		opts.ReferenceDir = filepath.Join(filepath.Dir(filepath.Clean(opts.Dir)), "reference")
	}
	res := &BaselineResult{File: filepath.Join(opts.Dir, BaselineFile), ReferenceFile: filepath.Join(opts.ReferenceDir, ReferenceFile)}
	if !opts.Force {
		for _, f := range []string{res.File, res.ReferenceFile} {
			if _, err := os.Stat(f); err == nil {
				return nil, fmt.Errorf("%s: %w", f, ErrFileExists)
			}
		}
	}
	conn, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the legacy database: %w", err)
	}
	tenant, shared, err := im.rules(ctx, conn, imp.LegacySchema)
	conn.Close(context.Background())
	if err != nil {
		return nil, err
	}
	ap, err := im.apartmentOf(ctx)
	if err != nil {
		return nil, err
	}
	sharedSchema := imp.LegacySchema
	if ap != nil {
		sharedSchema = "public" // a schema per tenant: public holds the shared tables
	}
	bin := opts.BinDir
	if bin == "" {
		if bin, err = localpg.FindBinDir(); err != nil {
			return nil, err
		}
	}
	write := func(file, schema string, ts []tables.Table, names *[]string, what string) error {
		if len(ts) == 0 {
			return nil
		}
		for _, t := range ts {
			*names = append(*names, t.Name)
		}
		ddl, err := dumpTables(ctx, bin, imp.LegacyDSN, schema, *names)
		if err != nil {
			return err
		}
		if ap != nil && schema == ap.template {
			ddl = withTenantColumn(ddl, ap.template, ap.column, ap.colType)
			what += fmt.Sprintf(" (template schema %s, with tenant column %s)", ap.template, ap.column)
		}
		body := fmt.Sprintf("-- +goose Up\n-- %s of the legacy database (pgtenant import schema): %s\n%s", what, strings.Join(*names, ", "), ddl)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return err
		}
		return os.WriteFile(file, []byte(body), 0o644)
	}
	if err := write(res.File, imp.LegacySchema, tenant, &res.Tables, "tenant tables"); err != nil {
		return nil, fmt.Errorf("write the baseline migration: %w", err)
	}
	if err := write(res.ReferenceFile, sharedSchema, shared, &res.Reference, "reference tables"); err != nil {
		return nil, fmt.Errorf("write the reference migration: %w", err)
	}
	if len(res.Reference) == 0 {
		res.ReferenceFile = ""
	}
	im.cat.RecordOperation(ctx, "import schema", map[string]any{"tables": res.Tables, "reference": res.Reference}, nil)
	return res, nil
}

// dumpTables is the schema-only dump of schema's tables, made to run in
// any schema: SET lines, comments and the schema's name are taken out.
func dumpTables(ctx context.Context, bin, dsn, schema string, names []string) (string, error) {
	args := []string{"--schema-only", "--no-owner", "--no-privileges", "--no-comments", "--no-publications", "--no-subscriptions", "--no-security-labels", "--no-tablespaces"}
	for _, n := range names {
		args = append(args, "-t", quotePattern(schema)+"."+quotePattern(n))
	}
	args = append(args, "-d", dsn)
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "pg_dump"), args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pg_dump: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return unqualify(string(out), schema), nil
}

// quotePattern makes a pg_dump pattern that matches name literally.
func quotePattern(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// unqualify drops pg_dump's session settings and comments and the schema's
// name before the objects it qualifies, so the statements create them in
// the first schema of the search_path (the shard's, under migrate up); also
// in a serial column's default, nextval('schema.seq'::regclass), so the
// shard's column takes ids from the shard's sequence.
func unqualify(dump, schema string) string {
	quoted := schema
	if !regexp.MustCompile(`^[a-z_][a-z0-9_]*$`).MatchString(schema) {
		quoted = `"` + strings.ReplaceAll(schema, `"`, `""`) + `"`
	}
	qual := regexp.QuoteMeta(quoted)
	re := regexp.MustCompile(`(^|[\s(,])` + qual + `\.`)
	// Inside the string constant, the name's single quotes are doubled.
	seqRE := regexp.MustCompile(`nextval\('` + regexp.QuoteMeta(strings.ReplaceAll(quoted, `'`, `''`)) + `\.`)
	var b strings.Builder
	blank := false
	for _, line := range strings.Split(dump, "\n") {
		if strings.HasPrefix(line, "--") || strings.HasPrefix(line, "SET ") || strings.HasPrefix(line, "SELECT pg_catalog.set_config(") || strings.HasPrefix(line, `\`) {
			continue
		}
		if strings.TrimSpace(line) == "" {
			if blank {
				continue
			}
			blank = true
		} else {
			blank = false
		}
		b.WriteString(re.ReplaceAllString(seqRE.ReplaceAllString(line, "nextval('"), "$1"))
		b.WriteByte('\n')
	}
	return strings.TrimLeft(b.String(), "\n")
}
