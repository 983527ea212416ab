package catalog

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TenantFileOptions tunes AddTenantFile.
type TenantFileOptions struct {
	// Shard, when set, places every tenant of the file there explicitly
	// instead of in its hash shard.
	Shard *int
	// SkipExisting leaves ids already registered as they are; without it
	// they fail the whole file.
	SkipExisting bool
	// Progress, when set, is called as the work goes on: "read" (every
	// 100,000 ids read), "copied" (all sent), "insert", then "commit", or,
	// when some ids were not inserted, "check" (looking for repeated ids)
	// and "registered" (naming the registered ones), with the number of ids
	// concerned.
	Progress func(stage string, ids int64)
}

// TenantFileResult is what AddTenantFile did.
type TenantFileResult struct {
	Read     int64 // ids in the file
	Added    int64 // tenants registered
	Existing int64 // ids already registered, left as they are (SkipExisting)
}

// LineError is one line of a tenant file that cannot be registered.
type LineError struct {
	Line   int64
	ID     string
	Reason string
}

// TenantFileError lists the lines of a tenant file that cannot be registered
// (at most maxLineErrors of them, Total counts all). Nothing was added.
type TenantFileError struct {
	Lines []LineError
	Total int64
	// Hint says what to do about them.
	Hint string
}

const maxLineErrors = 20

func (e *TenantFileError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d lines cannot be registered; nothing was added:", e.Total)
	for _, l := range e.Lines {
		fmt.Fprintf(&b, "\n  line %d: %q: %s", l.Line, l.ID, l.Reason)
	}
	if n := e.Total - int64(len(e.Lines)); n > 0 {
		fmt.Fprintf(&b, "\n  ... and %d more", n)
	}
	if e.Hint != "" {
		b.WriteString("\n" + e.Hint)
	}
	return b.String()
}

// AddTenantFile registers the tenants of r, one id a line (a final newline
// is optional, "\r\n" endings are accepted), in one transaction: the ids are
// checked as they are read and sent with COPY into a temporary table, and
// one INSERT ... SELECT places them all, by hash computed by the server or in
// opts.Shard (ON CONFLICT DO NOTHING with SkipExisting; without it a
// conflict undoes the insert). When it inserted fewer rows than ids, the ids
// that appear twice (and, unless SkipExisting, the ids already registered)
// are looked for and reported. Any bad line fails the whole file with a
// *TenantFileError naming the lines; nothing is added then.
func (c *Catalog) AddTenantFile(ctx context.Context, r io.Reader, opts TenantFileOptions) (TenantFileResult, error) {
	var res TenantFileResult
	count, err := c.ShardCount(ctx)
	if err != nil {
		return res, fmt.Errorf("add tenants: %w", err)
	}
	if s := opts.Shard; s != nil && (*s < 0 || *s >= count) {
		return res, fmt.Errorf("add tenants: shard %d is unknown (SQLSTATE 42704): shards are 0 to %d; `pgtenant shard list` names them", *s, count-1)
	}
	progress := opts.Progress
	if progress == nil {
		progress = func(string, int64) {}
	}
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TEMPORARY TABLE pgtenant_import (line bigint NOT NULL, id text NOT NULL) ON COMMIT DROP`); err != nil {
			return fmt.Errorf("create temporary table: %w", err)
		}
		src := &tenantLines{r: bufio.NewReaderSize(r, 1<<16), progress: progress}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"pgtenant_import"}, []string{"line", "id"}, src); err != nil {
			if src.err != nil {
				return fmt.Errorf("read tenant file: %w", src.err)
			}
			return fmt.Errorf("copy ids: %w", err)
		}
		res.Read = src.ids
		progress("copied", res.Read)
		if src.bad.Total > 0 {
			src.bad.Hint = "Fix those lines (an id is 1 to 255 bytes of UTF-8 without NUL) and run the command again."
			return &src.bad
		}
		progress("insert", res.Read)
		// The ids are sorted in memory (the default work_mem would spill a
		// million of them to disk) so that the primary key is filled in
		// order.
		if _, err := tx.Exec(ctx, `SET LOCAL work_mem = '64MB'`); err != nil {
			return fmt.Errorf("set work_mem: %w", err)
		}
		tag, err := insertTenantFile(ctx, tx, opts, count)
		if err != nil {
			return err
		}
		res.Added = tag
		if res.Added == res.Read {
			progress("commit", res.Added)
			return nil
		}
		progress("check", res.Read)
		dup := &TenantFileError{Hint: "Remove the repeated lines and run the command again."}
		rows, err := tx.Query(ctx, `SELECT l.line, l.id, l.first, count(*) OVER () FROM (
				SELECT line, id, min(line) OVER (PARTITION BY id) AS first FROM pgtenant_import) l
			WHERE l.line > l.first ORDER BY l.line LIMIT $1`, maxLineErrors)
		if err != nil {
			return fmt.Errorf("look for repeated ids: %w", err)
		}
		var le LineError
		var first int64
		if _, err := pgx.ForEachRow(rows, []any{&le.Line, &le.ID, &first, &dup.Total}, func() error {
			le.Reason = fmt.Sprintf("repeats line %d", first)
			dup.Lines = append(dup.Lines, le)
			return nil
		}); err != nil {
			return fmt.Errorf("look for repeated ids: %w", err)
		}
		if dup.Total > 0 {
			return dup
		}
		res.Existing = res.Read - res.Added
		if opts.SkipExisting {
			progress("commit", res.Added)
			return nil
		}
		progress("registered", res.Existing)
		// The rows this transaction did not write.
		ex := &TenantFileError{Hint: "Leave them out of the file, or pass --skip-existing to keep them as they are."}
		rows, err = tx.Query(ctx, `SELECT i.line, i.id, t.shard, count(*) OVER () FROM pgtenant_import i
			JOIN pgtenant.tenants t ON t.id = i.id WHERE t.xmin <> pg_current_xact_id()::xid ORDER BY i.line LIMIT $1`, maxLineErrors)
		if err != nil {
			return fmt.Errorf("look for registered ids: %w", err)
		}
		var shard int32
		if _, err := pgx.ForEachRow(rows, []any{&le.Line, &le.ID, &shard, &ex.Total}, func() error {
			le.Reason = fmt.Sprintf("already registered (shard %d)", shard)
			ex.Lines = append(ex.Lines, le)
			return nil
		}); err != nil {
			return fmt.Errorf("look for registered ids: %w", err)
		}
		if ex.Total == 0 {
			// The insert met an id that another session registered and
			// removed meanwhile.
			return errors.New("insert tenants: an id of the file was registered by another session meanwhile; run the command again")
		}
		return ex
	})
	detail := map[string]any{"file": true, "read": res.Read, "added": res.Added, "existing": res.Existing}
	if opts.Shard != nil {
		detail["shard"] = *opts.Shard
	}
	c.logOp(ctx, "tenant add", detail, err)
	if err != nil {
		var fe *TenantFileError
		if errors.As(err, &fe) {
			return TenantFileResult{Read: res.Read}, err
		}
		return TenantFileResult{Read: res.Read}, fmt.Errorf("add tenants: %w", err)
	}
	return res, nil
}

// insertTenantFile registers the ids of the temporary table pgtenant_import
// and returns how many it inserted. Without SkipExisting it is a plain
// INSERT: one repeated or registered id fails it with 23505, and it is then
// undone (a savepoint) and reported as inserting nothing, so that the
// caller's checks name the lines. ON CONFLICT DO NOTHING, needed only to
// skip registered ids, inserts every row speculatively (a pre-check of the
// primary key and a confirmation record per row): ~20 % slower for a
// million clean ids (bench/README.md).
func insertTenantFile(ctx context.Context, tx pgx.Tx, opts TenantFileOptions, count int) (int64, error) {
	const insert = `INSERT INTO pgtenant.tenants (id, shard, explicit)
		SELECT id, coalesce($1, (hashtextextended(id, 0) & ($2::bigint - 1))::int), $1 IS NOT NULL
		FROM pgtenant_import ORDER BY id`
	if opts.SkipExisting {
		tag, err := tx.Exec(ctx, insert+` ON CONFLICT (id) DO NOTHING`, opts.Shard, count)
		if err != nil {
			return 0, fmt.Errorf("insert tenants: %w", err)
		}
		return tag.RowsAffected(), nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("insert tenants: %w", err)
	}
	tag, err := sp.Exec(ctx, insert, opts.Shard, count)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			if rerr := sp.Rollback(ctx); rerr != nil {
				return 0, fmt.Errorf("insert tenants: %w", rerr)
			}
			return 0, nil
		}
		return 0, fmt.Errorf("insert tenants: %w", err)
	}
	if err := sp.Commit(ctx); err != nil {
		return 0, fmt.Errorf("insert tenants: %w", err)
	}
	return tag.RowsAffected(), nil
}

// tenantLines is a pgx.CopyFromSource over a file of ids, one a line. Bad
// lines are recorded and left out, so that the whole file is checked in
// one pass.
type tenantLines struct {
	r        *bufio.Reader
	progress func(string, int64)
	line     int64
	ids      int64
	row      [2]any
	bad      TenantFileError
	err      error
	done     bool
}

func (t *tenantLines) Next() bool {
	for !t.done {
		s, err := t.r.ReadString('\n')
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.err = err
				return false
			}
			t.done = true
			if s == "" {
				return false
			}
		}
		t.line++
		s = strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
		if err := placement.ValidateTenantID(s); err != nil {
			t.bad.Total++
			if len(t.bad.Lines) < maxLineErrors {
				id := s
				if len(id) > 64 {
					id = id[:64] + "..."
				}
				t.bad.Lines = append(t.bad.Lines, LineError{Line: t.line, ID: id, Reason: err.Error()})
			}
			continue
		}
		t.ids++
		if t.ids%100_000 == 0 {
			t.progress("read", t.ids)
		}
		t.row = [2]any{t.line, s}
		return true
	}
	return false
}

func (t *tenantLines) Values() ([]any, error) { return t.row[:], nil }

func (t *tenantLines) Err() error { return t.err }
