package importer

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// Mismatch is one tenant's table whose rows differ between the legacy
// database and the shard.
type Mismatch struct {
	Shard                         int
	Tenant, Table                 string
	LegacyRows, ShardRows         int64
	LegacyChecksum, ShardChecksum string
}

// VerifyReport is what Verify compared.
type VerifyReport struct {
	Shards, Tenants, Tables int
	Rows                    int64
	Mismatches              []Mismatch
}

// OK reports whether every tenant's rows matched.
func (r *VerifyReport) OK() bool { return len(r.Mismatches) == 0 }

// Verify compares, for every tenant of the given shards (all copied shards
// when shards is nil) and every tenant table, the row count and a checksum
// of the rows (md5 of their text, in order) between the legacy database and
// the shard's schema on its node. It reads each side in one REPEATABLE READ
// transaction; while changes flow the two sides are equal only once the
// stream has applied what the legacy side shows.
func (im *Importer) Verify(ctx context.Context, shards []int) (*VerifyReport, error) {
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("verify: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	rules, _, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	want := map[int]bool{}
	for _, s := range shards {
		want[s] = true
	}
	tenants, err := im.tenantsByShard(ctx)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{Tables: len(rules)}
	targets := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range targets {
			c.Close(context.Background())
		}
	}()
	for _, s := range all {
		if shards == nil && s.State != ShardCopied && s.State != ShardCutover || shards != nil && !want[s.Shard] {
			continue
		}
		if len(tenants[s.Shard]) == 0 {
			rep.Shards++
			continue
		}
		dst := targets[s.Node]
		if dst == nil {
			if dst, err = connect(ctx, s.NodeDSN); err != nil {
				return nil, fmt.Errorf("verify: connect to node %s: %w", s.Node, err)
			}
			targets[s.Node] = dst
		}
		l, err := sums(ctx, legacy, imp.LegacySchema, rules, tenants[s.Shard])
		if err != nil {
			return nil, fmt.Errorf("verify shard %d on the legacy database: %w", s.Shard, err)
		}
		r, err := sums(ctx, dst, s.Schema, rules, tenants[s.Shard])
		if err != nil {
			return nil, fmt.Errorf("verify shard %d on node %s: %w", s.Shard, s.Node, err)
		}
		rep.Shards++
		rep.Tenants += len(tenants[s.Shard])
		keys := map[[2]string]bool{}
		for k := range l {
			keys[k] = true
		}
		for k := range r {
			keys[k] = true
		}
		for k := range keys {
			a, b := l[k], r[k]
			rep.Rows += a.rows
			if a != b {
				rep.Mismatches = append(rep.Mismatches, Mismatch{Shard: s.Shard, Tenant: k[0], Table: k[1],
					LegacyRows: a.rows, ShardRows: b.rows, LegacyChecksum: a.sum, ShardChecksum: b.sum})
			}
		}
	}
	sort.Slice(rep.Mismatches, func(i, j int) bool {
		a, b := rep.Mismatches[i], rep.Mismatches[j]
		if a.Shard != b.Shard {
			return a.Shard < b.Shard
		}
		if a.Tenant != b.Tenant {
			return a.Tenant < b.Tenant
		}
		return a.Table < b.Table
	})
	im.cat.RecordOperation(ctx, "import verify", map[string]any{"shards": rep.Shards, "tenants": rep.Tenants, "rows": rep.Rows, "mismatches": len(rep.Mismatches)}, nil)
	return rep, nil
}

type sum struct {
	rows int64
	sum  string
}

// sums reads, for tenants, each table's row count and checksum per tenant
// in schema, in one REPEATABLE READ transaction.
func sums(ctx context.Context, conn *pgx.Conn, schema string, rules []tables.Table, tenants []string) (map[[2]string]sum, error) {
	byName := map[string]tables.Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	out := map[[2]string]sum{}
	err := pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		for _, t := range rules {
			var tenantExpr, join string
			switch t.Kind {
			case tables.KindTenant:
				tenantExpr = "pgtenant_t." + pgx.Identifier{t.TenantColumn}.Sanitize() + "::text"
			case tables.KindChild:
				p := byName[t.Parent]
				tenantExpr = "pgtenant_p." + pgx.Identifier{p.TenantColumn}.Sanitize() + "::text"
				join = fmt.Sprintf(" JOIN %s pgtenant_p ON pgtenant_p.%s = pgtenant_t.%s", pgx.Identifier{schema, p.Name}.Sanitize(),
					pgx.Identifier{t.ParentColumn}.Sanitize(), pgx.Identifier{t.ParentKey}.Sanitize())
			default:
				continue
			}
			q := fmt.Sprintf(`SELECT %s, count(*), md5(string_agg(pgtenant_t::text, E'\n' ORDER BY pgtenant_t::text COLLATE "C"))
				FROM %s pgtenant_t%s WHERE %[1]s = ANY ($1) GROUP BY 1`, tenantExpr, pgx.Identifier{schema, t.Name}.Sanitize(), join)
			rows, err := tx.Query(ctx, q, tenants)
			if err != nil {
				return fmt.Errorf("table %s: %w", t.Name, err)
			}
			var tenant string
			var s sum
			if _, err := pgx.ForEachRow(rows, []any{&tenant, &s.rows, &s.sum}, func() error {
				out[[2]string{tenant, t.Name}] = s
				return nil
			}); err != nil {
				return fmt.Errorf("table %s: %w", t.Name, err)
			}
		}
		return nil
	})
	return out, err
}

// String describes a mismatch in one line.
func (m Mismatch) String() string {
	return fmt.Sprintf("shard %d tenant %q table %s: legacy %d rows (%s), shard %d rows (%s)", m.Shard, m.Tenant, m.Table,
		m.LegacyRows, short(m.LegacyChecksum), m.ShardRows, short(m.ShardChecksum))
}

func short(s string) string {
	if s == "" {
		return "-"
	}
	return strings.TrimSpace(s)[:8]
}
