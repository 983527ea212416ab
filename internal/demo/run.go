package demo

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// Options tune Run. Zero values mean the defaults.
type Options struct {
	// Cluster is passed to devcluster.Up (directory, nodes, shards).
	Cluster devcluster.Options
	// Tenants is how many tenants to create; zero means 1000.
	Tenants int
	// Out receives the demo's narration; nil discards it.
	Out io.Writer
	// Logger, nil means discard.
	Logger *slog.Logger
	// Started, when set, is called once the cluster is up (the CLI starts
	// the router there).
	Started func(ctx context.Context, cl *devcluster.Cluster) error
	// Query, when set, runs a demo query for a tenant. Nil runs it directly on
	// the tenant's node with search_path set to its shard. The router wires
	// itself in here.
	Query func(ctx context.Context, tenant string, loc placement.Location, sql string) (pgx.Rows, func(), error)
}

// Result is what Run did.
type Result struct {
	Cluster *devcluster.Cluster
	Tenants int
	Rows    int64 // readings rows in all shards
	Shown   []placement.Location
}

// Run starts the local cluster, applies the sample schema to every shard,
// registers tenants, loads their data, and runs the ad-hoc queries for a few
// tenants, printing where each lives and what came back. Running it again
// reuses the cluster and the data.
func Run(ctx context.Context, opts Options) (*Result, error) {
	if opts.Tenants == 0 {
		opts.Tenants = 1000
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	out := opts.Out
	step := func(format string, args ...any) func() {
		start := time.Now()
		fmt.Fprintf(out, "==> "+format, args...)
		return func() { fmt.Fprintf(out, " (%s)\n", time.Since(start).Round(10*time.Millisecond)) }
	}

	done := step("starting a local cluster")
	cl, err := devcluster.Up(ctx, opts.Cluster)
	if err != nil {
		fmt.Fprintln(out)
		return nil, err
	}
	done()
	fmt.Fprintf(out, "    %d nodes, %d shards, catalog %s\n", len(cl.Nodes), cl.Shards, catalog.RedactDSN(cl.CatalogDSN))
	if opts.Started != nil {
		done = step("starting the router")
		if err := opts.Started(ctx, cl); err != nil {
			fmt.Fprintln(out)
			return nil, err
		}
		done()
	}

	cat := catalog.New(cl.CatalogDSN, opts.Logger)
	if err := cat.Open(ctx); err != nil {
		return nil, err
	}
	defer cat.Close()

	done = step("applying the sample schema (5 tables) to every shard")
	shards, err := cat.Shards(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := cat.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	dsn := map[string]string{}
	for _, n := range nodes {
		dsn[n.Name] = n.DSN
	}
	targets := make([]migrate.Target, len(shards))
	for i, s := range shards {
		targets[i] = migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]}
	}
	// AllowChanged: a newer pgtenant may ship an edited sample schema; the
	// demo takes its own files as they are. A user's file that took the
	// sample's version is still refused.
	sum, err := migrate.Up(ctx, Migrations(), targets, migrate.Options{Logger: opts.Logger, AllowChanged: true})
	if err != nil {
		fmt.Fprintln(out)
		return nil, err
	}
	done()
	fmt.Fprintf(out, "    %d shards migrated, %d already current\n", sum.Migrated, sum.Current)

	done = step("registering %d tenants", opts.Tenants)
	ids := TenantIDs(opts.Tenants)
	added, err := cat.AddTenants(ctx, ids)
	if err != nil {
		return nil, err
	}
	done()
	fmt.Fprintf(out, "    %d new; each placed by hashtextextended(id, 0) & %d\n", added, cl.Shards-1)

	m, err := cat.LoadMap(ctx)
	if err != nil {
		return nil, err
	}
	mine := map[string]int{}
	for _, id := range ids {
		loc, err := m.Lookup(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("locate tenant %q: %w", id, err)
		}
		mine[id] = loc.Shard.ID
	}
	done = step("loading buildings, meters, a week of hourly readings and tariffs")
	if err := seedAll(ctx, m, mine); err != nil {
		fmt.Fprintln(out)
		return nil, err
	}
	done()
	res := &Result{Cluster: cl, Tenants: len(ids)}
	if res.Rows, err = countReadings(ctx, m); err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "    %d readings across %d shards on %d nodes\n", res.Rows, len(m.Shards), len(m.Nodes))

	biggest, smallest, err := extremes(ctx, m, mine)
	if err != nil {
		return nil, err
	}
	for _, tenant := range []string{biggest, smallest, ids[0]} {
		loc, err := m.Locate(tenant)
		if err != nil {
			return nil, err
		}
		res.Shown = append(res.Shown, loc)
		via := "directly on the node"
		if opts.Query != nil {
			via = "through the router"
		}
		fmt.Fprintf(out, "\n--- tenant %q lives in shard %d (schema %s) on %s; queries run %s\n", tenant, loc.Shard.ID, loc.Shard.Schema, loc.Node.Name, via)
		for _, q := range Queries {
			fmt.Fprintf(out, "\n%s:\n", q.Title)
			if err := runQuery(ctx, opts, tenant, loc, q.SQL, out); err != nil {
				return nil, fmt.Errorf("tenant %q: %s: %w", tenant, q.Title, err)
			}
		}
	}
	return res, nil
}

// seedAll seeds every shard, one goroutine per node.
func seedAll(ctx context.Context, m *placement.Map, tenants map[string]int) error {
	shardIDs, groups := ByShard(tenants)
	perNode := map[string][]int{}
	for _, s := range shardIDs {
		perNode[m.Shards[s].Node] = append(perNode[m.Shards[s].Node], s)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(perNode))
	for node, ss := range perNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, m.Nodes[node].DSN)
			if err != nil {
				errs <- fmt.Errorf("node %s: %w", node, err)
				return
			}
			defer conn.Close(context.WithoutCancel(ctx))
			for _, s := range ss {
				if err := Seed(ctx, conn, m.Shards[s].Schema, groups[s]); err != nil {
					errs <- fmt.Errorf("node %s: %w", node, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func countReadings(ctx context.Context, m *placement.Map) (int64, error) {
	var total int64
	for name, n := range m.Nodes {
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			return 0, fmt.Errorf("node %s: %w", name, err)
		}
		var c int64
		err = conn.QueryRow(ctx, `SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'readings'`).Scan(&c)
		conn.Close(ctx)
		if err != nil {
			return 0, err
		}
		total += c
	}
	return total, nil
}

// extremes finds the tenants with the most and the fewest meters.
func extremes(ctx context.Context, m *placement.Map, tenants map[string]int) (string, string, error) {
	type tc struct {
		t string
		n int
	}
	var best, worst tc
	worst.n = 1 << 30
	for name, n := range m.Nodes {
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			return "", "", fmt.Errorf("node %s: %w", name, err)
		}
		var parts []string
		for _, s := range m.Shards {
			if s.Node == name {
				parts = append(parts, "SELECT tenant_id FROM "+pgx.Identifier{s.Schema, "meters"}.Sanitize())
			}
		}
		if len(parts) == 0 {
			conn.Close(ctx)
			continue
		}
		rows, err := conn.Query(ctx, `SELECT tenant_id, count(*)::int FROM (`+strings.Join(parts, " UNION ALL ")+`) x GROUP BY 1`)
		if err != nil {
			conn.Close(ctx)
			return "", "", err
		}
		var t string
		var c int
		_, err = pgx.ForEachRow(rows, []any{&t, &c}, func() error {
			if _, ok := tenants[t]; !ok {
				return nil
			}
			if c > best.n || (c == best.n && t < best.t) {
				best = tc{t, c}
			}
			if c < worst.n || (c == worst.n && t < worst.t) {
				worst = tc{t, c}
			}
			return nil
		})
		conn.Close(ctx)
		if err != nil {
			return "", "", err
		}
	}
	return best.t, worst.t, nil
}

func runQuery(ctx context.Context, opts Options, tenant string, loc placement.Location, sql string, out io.Writer) error {
	var rows pgx.Rows
	var release func()
	var err error
	if opts.Query != nil {
		rows, release, err = opts.Query(ctx, tenant, loc, sql)
	} else {
		rows, release, err = direct(ctx, loc, tenant, sql)
	}
	if err != nil {
		return err
	}
	defer release()
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	var head []string
	for _, f := range rows.FieldDescriptions() {
		head = append(head, f.Name)
	}
	fmt.Fprintln(w, "    "+strings.Join(head, "\t"))
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return err
		}
		cells := make([]string, len(vals))
		for i, v := range vals {
			cells[i] = formatValue(v)
		}
		fmt.Fprintln(w, "    "+strings.Join(cells, "\t"))
	}
	if err := rows.Err(); err != nil {
		return err
	}
	return w.Flush()
}

func direct(ctx context.Context, loc placement.Location, tenant, sql string) (pgx.Rows, func(), error) {
	cfg, err := pgx.ParseConfig(loc.Node.DSN)
	if err != nil {
		return nil, nil, err
	}
	cfg.RuntimeParams["search_path"] = loc.Shard.Schema
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}
	rows, err := conn.Query(ctx, sql, tenant)
	if err != nil {
		conn.Close(ctx)
		return nil, nil, err
	}
	return rows, func() { rows.Close(); conn.Close(ctx) }, nil
}

func formatValue(v any) string {
	switch x := v.(type) {
	case time.Time:
		if x.Hour() == 0 && x.Minute() == 0 && x.Second() == 0 {
			return x.Format("2006-01-02")
		}
		return x.Format("2006-01-02 15:04")
	case pgtype.Numeric:
		if f, err := x.Float64Value(); err == nil && f.Valid {
			return strconv.FormatFloat(f.Float64, 'f', -1, 64)
		}
	case nil:
		return "NULL"
	}
	return fmt.Sprint(v)
}
