package move

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// TableCheck compares one table on source and target.
type TableCheck struct {
	Table                  string
	SourceRows, TargetRows int64
	// SourceSum and TargetSum are the sum of hashtextextended(row::text, 0)
	// over the table's rows: one sequential scan, no sort, order-independent.
	SourceSum, TargetSum string
	// Missing names the side the table is missing on ("source" or "target").
	Missing string
}

// OK reports whether the table matches.
func (c TableCheck) OK() bool {
	return c.Missing == "" && c.SourceRows == c.TargetRows && c.SourceSum == c.TargetSum
}

// VerifyReport is the result of comparing a shard's schema on two nodes.
type VerifyReport struct {
	Schema string
	Tables []TableCheck
}

// OK reports whether every table matches.
func (r VerifyReport) OK() bool { return r.Err() == nil }

// Err describes the mismatches, or is nil.
func (r VerifyReport) Err() error {
	var bad []string
	for _, t := range r.Tables {
		switch {
		case t.OK():
		case t.Missing != "":
			bad = append(bad, fmt.Sprintf("%s missing on %s", t.Table, t.Missing))
		case t.SourceRows != t.TargetRows:
			bad = append(bad, fmt.Sprintf("%s has %d rows on source, %d on target", t.Table, t.SourceRows, t.TargetRows))
		default:
			bad = append(bad, fmt.Sprintf("%s checksum differs", t.Table))
		}
	}
	if len(bad) == 0 {
		return nil
	}
	return fmt.Errorf("%w: schema %s: %s", ErrMismatch, r.Schema, strings.Join(bad, "; "))
}

// ErrMismatch is wrapped by VerifyReport.Err when source and target differ.
var ErrMismatch = errors.New("source and target differ")

type tableSum struct {
	rows int64
	sum  string
}

func sums(ctx context.Context, conn *pgx.Conn, schema string) (map[string]tableSum, error) {
	names, err := tables(ctx, conn, schema)
	if err != nil {
		return nil, err
	}
	out := make(map[string]tableSum, len(names))
	for _, n := range names {
		var s tableSum
		q := `SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM ONLY ` + ident(schema, n) + ` AS t`
		if err := conn.QueryRow(ctx, q, pgx.QueryExecModeSimpleProtocol).Scan(&s.rows, &s.sum); err != nil {
			return nil, fmt.Errorf("checksum %s: %w", n, err)
		}
		out[n] = s
	}
	return out, nil
}

// VerifySchemas compares row counts and checksums of every table of schema
// between src and dst, scanning both sides at once. The comparison is exact
// only while no writes are in flight (under the fence); while catching up it
// shows how far the target is behind.
func VerifySchemas(ctx context.Context, src, dst *pgx.Conn, schema string) (VerifyReport, error) {
	type result struct {
		m   map[string]tableSum
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := sums(ctx, dst, schema)
		ch <- result{m, err}
	}()
	sm, serr := sums(ctx, src, schema)
	dr := <-ch
	if serr != nil {
		return VerifyReport{}, fmt.Errorf("source: %w", serr)
	}
	if dr.err != nil {
		return VerifyReport{}, fmt.Errorf("target: %w", dr.err)
	}
	rep := VerifyReport{Schema: schema}
	seen := map[string]bool{}
	for n, s := range sm {
		seen[n] = true
		c := TableCheck{Table: n, SourceRows: s.rows, SourceSum: s.sum}
		if d, ok := dr.m[n]; ok {
			c.TargetRows, c.TargetSum = d.rows, d.sum
		} else {
			c.Missing = "target"
		}
		rep.Tables = append(rep.Tables, c)
	}
	for n, d := range dr.m {
		if !seen[n] {
			rep.Tables = append(rep.Tables, TableCheck{Table: n, TargetRows: d.rows, TargetSum: d.sum, Missing: "source"})
		}
	}
	sort.Slice(rep.Tables, func(i, j int) bool { return rep.Tables[i].Table < rep.Tables[j].Table })
	return rep, nil
}

// Verify compares the shard's schema on the source and target of its running move.
func (m *Mover) Verify(ctx context.Context, shard int) (VerifyReport, error) {
	var id int64
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT id FROM pgtenant.moves WHERE shard = $1 AND status = 'running'`, shard).Scan(&id); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return VerifyReport{}, fmt.Errorf("verify shard %d: no running move", shard)
		}
		return VerifyReport{}, fmt.Errorf("verify shard %d: %w", shard, err)
	}
	mv, err := m.loadMove(ctx, id)
	if err != nil {
		return VerifyReport{}, fmt.Errorf("verify shard %d: %w", shard, err)
	}
	defer closeConns(mv)
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return VerifyReport{}, fmt.Errorf("verify shard %d: %w", shard, err)
	}
	rep, err := VerifySchemas(ctx, src, dst, mv.Schema)
	if err != nil {
		return rep, fmt.Errorf("verify shard %d: %w", shard, err)
	}
	return rep, nil
}
