package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
)

// ShardStatus is where one shard stands against the migrations in a directory.
type ShardStatus struct {
	Target Target
	// Current is the highest version applied on the shard; zero when none.
	Current int64
	// Latest is the highest version available; zero when there are none.
	Latest int64
	// Pending are the available versions not applied on the shard, ascending.
	Pending []int64
	// Applied are the versions applied on the shard, ascending, with the file
	// name and checksum recorded for each (empty when recorded before
	// pgtenant kept them).
	Applied []Applied
	// Drift lists applied versions whose file in the directory changed, has
	// another name, or is missing; nil when every applied file is as it was.
	Drift []Mismatch
	// Unrecorded are applied versions with no file name and checksum on the
	// shard (applied before pgtenant recorded them); the next Up or Down
	// records those of the current files.
	Unrecorded []int64
}

// Behind reports whether the shard has pending migrations.
func (s ShardStatus) Behind() bool { return len(s.Pending) > 0 }

// Applied is one version applied on a shard, as its version table records it.
type Applied struct {
	Version int64
	// File and Checksum are empty when the version was applied before
	// pgtenant recorded them.
	File, Checksum string
}

// DriftKind says how an applied migration differs from its file.
type DriftKind int

const (
	// Changed: the file has the name it was applied from but other bytes.
	Changed DriftKind = iota + 1
	// Renamed: the directory's file for the version has another name than
	// the file the version was applied from (typically another migration
	// that reuses the version). Always refused: a version is one migration.
	Renamed
	// Missing: no file in the directory has the version.
	Missing
)

func (k DriftKind) String() string {
	switch k {
	case Changed:
		return "changed"
	case Renamed:
		return "renamed"
	case Missing:
		return "missing"
	}
	return "DriftKind(" + strconv.Itoa(int(k)) + ")"
}

// Mismatch is one applied version on one shard that differs from the
// directory.
type Mismatch struct {
	Kind    DriftKind
	Version int64
	// AppliedFile is the file name the version was applied from; empty when
	// it was applied before pgtenant recorded names.
	AppliedFile string
	// File is the directory's file with Version; empty when Missing.
	File string
}

// Drift is a Mismatch shared by a set of shards.
type Drift struct {
	Mismatch
	// Shards are the shard ids, ascending.
	Shards []int
}

func (d Drift) String() string {
	on := "on " + ShardRanges(d.Shards)
	switch d.Kind {
	case Changed:
		return fmt.Sprintf("%s (version %d) changed since it was applied %s", d.File, d.Version, on)
	case Renamed:
		return fmt.Sprintf("version %d was applied from %s %s, but the directory has %s for it", d.Version, d.AppliedFile, on, d.File)
	default:
		if d.AppliedFile == "" {
			return fmt.Sprintf("version %d (applied %s before file names were recorded) has no file in the directory", d.Version, on)
		}
		return fmt.Sprintf("version %d (applied from %s %s) has no file in the directory", d.Version, d.AppliedFile, on)
	}
}

// Drifts groups the mismatches of statuses by kind, version and file names,
// ordered by version.
func Drifts(statuses []ShardStatus) []Drift {
	idx := map[Mismatch]int{}
	var out []Drift
	for _, s := range statuses {
		for _, m := range s.Drift {
			i, ok := idx[m]
			if !ok {
				i = len(out)
				idx[m] = i
				out = append(out, Drift{Mismatch: m})
			}
			out[i].Shards = append(out[i].Shards, s.Target.Shard)
		}
	}
	for i := range out {
		slices.Sort(out[i].Shards)
	}
	slices.SortStableFunc(out, func(a, b Drift) int {
		if c := cmpInt64(a.Version, b.Version); c != 0 {
			return c
		}
		return int(a.Kind) - int(b.Kind)
	})
	return out
}

// DriftError refuses a run because applied migrations differ from the files
// in the directory. Up, Down and the CLI's status return it.
type DriftError struct {
	// Drifts are the refused differences.
	Drifts []Drift
}

func (e *DriftError) Error() string {
	var b strings.Builder
	n := len(e.Drifts)
	fmt.Fprintf(&b, "%d applied migration%s differ%s from the files in the directory; nothing was run:",
		n, plural(n, "", "s"), plural(n, "s", ""))
	kinds := map[DriftKind]bool{}
	for _, d := range e.Drifts {
		fmt.Fprintf(&b, "\n  %s", d)
		kinds[d.Kind] = true
	}
	if kinds[Changed] {
		b.WriteString("\nchanging an applied file does not run it again: restore the file and put the change in a new " +
			"migration (`pgtenant migrate create NAME`), or pass --allow-changed to accept the files as they are now")
	}
	if kinds[Renamed] {
		b.WriteString("\na version is one migration: give the new file a new version (`pgtenant migrate create NAME`), " +
			"or, if you renamed the file, give it back the name it was applied from")
	}
	if kinds[Missing] {
		b.WriteString("\nrestore the missing files or point --dir at the directory they came from " +
			"(or pass --allow-changed to go on without them)")
	}
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Refused returns the drifts a run refuses: all of them, or only Renamed
// ones when allowChanged.
func Refused(drifts []Drift, allowChanged bool) []Drift {
	var out []Drift
	for _, d := range drifts {
		if !allowChanged || d.Kind == Renamed {
			out = append(out, d)
		}
	}
	return out
}

// ShardRanges formats shard ids (ascending) as "shard 3" or
// "shards 0-7, 9, 12-15".
func ShardRanges(ids []int) string {
	if len(ids) == 1 {
		return "shard " + strconv.Itoa(ids[0])
	}
	var parts []string
	for i := 0; i < len(ids); {
		j := i
		for j+1 < len(ids) && ids[j+1] == ids[j]+1 {
			j++
		}
		switch {
		case j == i:
			parts = append(parts, strconv.Itoa(ids[i]))
		case j == i+1:
			parts = append(parts, strconv.Itoa(ids[i]), strconv.Itoa(ids[j]))
		default:
			parts = append(parts, fmt.Sprintf("%d-%d", ids[i], ids[j]))
		}
		i = j + 1
	}
	return "shards " + strings.Join(parts, ", ")
}

// Status reads every target's applied versions and compares them with the
// migrations in fsys: pending versions, and applied files that changed, were
// renamed or are missing (Drifts groups those over shards). It returns one
// ShardStatus per target, in the order given. It reads with one connection
// per node and changes nothing. A target whose schema is missing is an error
// (*ShardError wrapping ErrNoSchema).
func Status(ctx context.Context, fsys fs.FS, targets []Target) ([]ShardStatus, error) {
	files, err := Files(fsys)
	if err != nil {
		return nil, err
	}
	if _, err := Versions(fsys); err != nil {
		return nil, err
	}
	return status(ctx, files, targets)
}

func status(ctx context.Context, files []File, targets []Target) ([]ShardStatus, error) {
	nodes, err := groupByNode(targets)
	if err != nil {
		return nil, err
	}
	byVersion := make(map[int64]File, len(files))
	for _, f := range files {
		byVersion[f.Version] = f
	}
	byTarget := make(map[[2]string]ShardStatus, len(targets))
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs = make([]error, len(nodes))
	)
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				conn, err := pgx.ConnectConfig(ctx, n.cfg)
				if err != nil {
					return fmt.Errorf("connect to node %s: %w", n.name, err)
				}
				defer conn.Close(context.WithoutCancel(ctx))
				for _, t := range n.targets {
					applied, err := appliedVersions(ctx, conn, t)
					if err != nil {
						return err
					}
					st := compare(t, files, byVersion, applied)
					mu.Lock()
					byTarget[[2]string{t.Node, t.Schema}] = st
					mu.Unlock()
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	out := make([]ShardStatus, len(targets))
	for i, t := range targets {
		out[i] = byTarget[[2]string{t.Node, t.Schema}]
	}
	return out, nil
}

// compare builds t's status from its applied versions and the files.
func compare(t Target, files []File, byVersion map[int64]File, applied []Applied) ShardStatus {
	st := ShardStatus{Target: t, Applied: applied}
	if len(files) > 0 {
		st.Latest = files[len(files)-1].Version
	}
	if len(applied) > 0 {
		st.Current = applied[len(applied)-1].Version
	}
	isApplied := make(map[int64]bool, len(applied))
	for _, a := range applied {
		isApplied[a.Version] = true
		f, ok := byVersion[a.Version]
		switch {
		case !ok:
			st.Drift = append(st.Drift, Mismatch{Kind: Missing, Version: a.Version, AppliedFile: a.File})
		case a.File == "":
			st.Unrecorded = append(st.Unrecorded, a.Version)
		case a.File != f.Name:
			st.Drift = append(st.Drift, Mismatch{Kind: Renamed, Version: a.Version, AppliedFile: a.File, File: f.Name})
		case a.Checksum != f.Checksum:
			st.Drift = append(st.Drift, Mismatch{Kind: Changed, Version: a.Version, AppliedFile: a.File, File: f.Name})
		}
	}
	for _, f := range files {
		if !isApplied[f.Version] {
			st.Pending = append(st.Pending, f.Version)
		}
	}
	return st
}

// appliedVersions returns the versions applied on t's shard, ascending:
// those whose latest goose row says applied, with the file name and checksum
// recorded with that row. A shard without a version table has none.
func appliedVersions(ctx context.Context, conn *pgx.Conn, t Target) ([]Applied, error) {
	var schemaExists, tableExists, recorded bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
		EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'goose_db_version'),
		EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = 'goose_db_version' AND a.attname = 'checksum' AND NOT a.attisdropped)`, t.Schema).
		Scan(&schemaExists, &tableExists, &recorded)
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	if !schemaExists {
		return nil, &ShardError{Target: t, Err: ErrNoSchema}
	}
	if !tableExists {
		return nil, nil
	}
	cols := "NULL::text AS file_name, NULL::text AS checksum"
	if recorded {
		cols = "file_name, checksum"
	}
	table := pgx.Identifier{t.Schema, "goose_db_version"}.Sanitize()
	rows, err := conn.Query(ctx, `SELECT version_id, coalesce(file_name, ''), coalesce(checksum, '') FROM (
		SELECT DISTINCT ON (version_id) version_id, is_applied, `+cols+` FROM `+table+`
		WHERE version_id > 0 ORDER BY version_id, id DESC) v
		WHERE is_applied ORDER BY version_id`)
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	vs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Applied, error) {
		var a Applied
		err := r.Scan(&a.Version, &a.File, &a.Checksum)
		return a, err
	})
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	return vs, nil
}
