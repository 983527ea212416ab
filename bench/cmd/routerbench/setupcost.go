package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// The -setupcost case: the server's CPU per transaction for the router's
// setup and its alternatives, on one backend each, without pgbench, a
// proxy or other clients: one local cluster, the shards' accounts tables,
// a connection per variant, setupCostTxns transactions per variant and
// round (a random shard and tenant each), the variants interleaved, the
// backend's user+system time read from /proc/PID/stat before and after.
// It tells the server's share of a setup apart from the machine's load,
// which moves routerbench's TPS and "postgres µs/txn" several-fold.

// setupCostTxns is how many transactions a variant runs per round.
const setupCostTxns = 10000

// setupVariant is one way of running a point select with (or without) a
// tenant's setup.
type setupVariant struct {
	name string
	// fixed runs on shard 0 with the connection's search_path (the
	// "fixed path": no setup at all).
	fixed bool
	run   func(ctx context.Context, pc *pgconn.PgConn, shard, tenant, id int) error
}

// setupVariants mirrors what the router sends (internal/router combined.go
// for the simple protocol, writeSetup's prepared statements for the
// extended one), before and after the simple Query's setup became SET
// LOCAL (issue 15, session 8).
func setupVariants() []setupVariant {
	sel := "SELECT balance FROM accounts WHERE id = "
	simple := func(f func(shard, tenant, id int) string) func(context.Context, *pgconn.PgConn, int, int, int) error {
		return func(ctx context.Context, pc *pgconn.PgConn, shard, tenant, id int) error {
			_, err := pc.Exec(ctx, f(shard, tenant, id)).ReadAll()
			return err
		}
	}
	batch := func(f func(b *pgconn.Batch, shard, tenant, id int)) func(context.Context, *pgconn.PgConn, int, int, int) error {
		return func(ctx context.Context, pc *pgconn.PgConn, shard, tenant, id int) error {
			b := &pgconn.Batch{}
			f(b, shard, tenant, id)
			_, err := pc.ExecBatch(ctx, b).ReadAll()
			return err
		}
	}
	path := func(shard int) []byte { return []byte(fmt.Sprintf("shard_%04d, public, pg_temp", shard)) }
	selByShard := func(b *pgconn.Batch, shard, id int) {
		b.ExecPrepared("sel"+strconv.Itoa(shard), [][]byte{[]byte(strconv.Itoa(id))}, nil, nil)
	}
	return []setupVariant{
		{name: "simple, fixed path", fixed: true, run: simple(func(_, _, id int) string { return sel + strconv.Itoa(id) })},
		{name: "simple, DISCARD TEMP;SELECT set_config(…),set_config(…);SELECT (router before)", run: simple(func(shard, tenant, id int) string {
			return fmt.Sprintf(`DISCARD TEMP;SELECT pg_catalog.set_config('search_path', '"shard_%04d", "public", pg_temp', true), pg_catalog.set_config('pgtenant.tenant_id', '%d', true);%s%d`, shard, tenant, sel, id)
		})},
		{name: "simple, DISCARD TEMP;SET LOCAL …;SET LOCAL …;SELECT (router now)", run: simple(func(shard, tenant, id int) string {
			return fmt.Sprintf(`DISCARD TEMP;SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp';SET LOCAL pgtenant.tenant_id = '%d';%s%d`, shard, tenant, sel, id)
		})},
		// Session 10: the parts of the router's setup, and the data of 16
		// shards against shard 0's alone (fixed.sql reads shard 0 only).
		{name: "simple, 16 shards schema-qualified, no setup (data spread)", run: simple(func(shard, _, id int) string {
			return fmt.Sprintf("SELECT balance FROM shard_%04d.accounts WHERE id = %d", shard, id)
		})},
		{name: "simple, SET LOCAL path (shard 0's);SELECT (a SET, no spread)", fixed: true, run: simple(func(shard, _, id int) string {
			return fmt.Sprintf(`SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp';%s%d`, shard, sel, id)
		})},
		{name: "simple, SET LOCAL path;SELECT", run: simple(func(shard, _, id int) string {
			return fmt.Sprintf(`SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp';%s%d`, shard, sel, id)
		})},
		{name: "simple, SET LOCAL tenant;SELECT qualified", run: simple(func(shard, tenant, id int) string {
			return fmt.Sprintf(`SET LOCAL pgtenant.tenant_id = '%d';SELECT balance FROM shard_%04d.accounts WHERE id = %d`, tenant, shard, id)
		})},
		{name: "simple, DISCARD TEMP;SELECT qualified", run: simple(func(shard, _, id int) string {
			return fmt.Sprintf(`DISCARD TEMP;SELECT balance FROM shard_%04d.accounts WHERE id = %d`, shard, id)
		})},
		{name: "simple, SET LOCAL …;SET LOCAL …;SELECT (router without DISCARD TEMP)", run: simple(func(shard, tenant, id int) string {
			return fmt.Sprintf(`SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp';SET LOCAL pgtenant.tenant_id = '%d';%s%d`, shard, tenant, sel, id)
		})},
		{name: "extended, fixed path", fixed: true, run: batch(func(b *pgconn.Batch, _, _, id int) { selByShard(b, 0, id) })},
		{name: "extended, prepared DISCARD TEMP and set_config (router)", run: batch(func(b *pgconn.Batch, shard, tenant, id int) {
			b.ExecPrepared("discard", nil, nil, nil)
			b.ExecPrepared("setup", [][]byte{path(shard), []byte(strconv.Itoa(tenant))}, nil, nil)
			selByShard(b, shard, id)
		})},
		{name: "extended, prepared select, 16 shards (data spread, no setup)", run: batch(func(b *pgconn.Batch, shard, _, id int) {
			b.ExecPrepared("qsel"+strconv.Itoa(shard), [][]byte{[]byte(strconv.Itoa(id))}, nil, nil)
		})},
		{name: "extended, prepared set_config (router without DISCARD TEMP)", run: batch(func(b *pgconn.Batch, shard, tenant, id int) {
			b.ExecPrepared("setup", [][]byte{path(shard), []byte(strconv.Itoa(tenant))}, nil, nil)
			selByShard(b, shard, id)
		})},
		{name: "extended, prepared DISCARD TEMP, Parse/Bind/Execute of 2 SET LOCAL", run: batch(func(b *pgconn.Batch, shard, tenant, id int) {
			b.ExecPrepared("discard", nil, nil, nil)
			b.ExecParams(fmt.Sprintf("SET LOCAL search_path = shard_%04d, public, pg_temp", shard), nil, nil, nil, nil)
			b.ExecParams(fmt.Sprintf("SET LOCAL pgtenant.tenant_id = '%d'", tenant), nil, nil, nil, nil)
			selByShard(b, shard, id)
		})},
	}
}

// runSetupCost runs the -setupcost case and prints µs of backend CPU per
// transaction, per variant and round.
func runSetupCost(ctx context.Context, o options, w io.Writer) error {
	root, err := os.MkdirTemp("", "routerbench-setupcost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	c := localpg.New(filepath.Join(root, "a"), 0)
	c.Settings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
	if err := c.Init(ctx); err != nil {
		return fmt.Errorf("init node: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.Stop(sctx)
	}()
	rowsPer := o.rows / o.tenants
	if rowsPer < 1 {
		return fmt.Errorf("need at least one row per tenant")
	}
	shards := make([]int, o.shards)
	for i := range shards {
		shards[i] = i
	}
	if err := load(ctx, c, shards, o, rowsPer); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	slog.New(slog.NewTextHandler(os.Stderr, nil)).Info("setupcost: node loaded", "port", c.Port, "shards", o.shards)
	vs := setupVariants()
	conns := make([]*pgconn.PgConn, len(vs))
	for i := range vs {
		pc, err := pgconn.Connect(ctx, c.DSN("bench"))
		if err != nil {
			return err
		}
		defer pc.Close(context.Background())
		if _, err := pc.Prepare(ctx, "discard", "DISCARD TEMP", nil); err != nil {
			return err
		}
		if _, err := pc.Prepare(ctx, "setup", "SELECT pg_catalog.set_config('search_path', $1, true), pg_catalog.set_config('pgtenant.tenant_id', $2, true)", nil); err != nil {
			return err
		}
		// One prepared select per shard, planned with that shard's
		// search_path, as the router keeps them: a search_path that
		// differs from the planned one would make the server re-plan.
		for s := o.shards - 1; s >= 0; s-- {
			if _, err := pc.Exec(ctx, fmt.Sprintf("SET search_path = shard_%04d, public, pg_temp", s)).ReadAll(); err != nil {
				return err
			}
			if _, err := pc.Prepare(ctx, "sel"+strconv.Itoa(s), "SELECT balance FROM accounts WHERE id = $1", nil); err != nil {
				return err
			}
		}
		// Schema-qualified selects, planned under shard 0's search_path
		// and run under it: no re-plan.
		for s := 0; s < o.shards; s++ {
			if _, err := pc.Prepare(ctx, "qsel"+strconv.Itoa(s), fmt.Sprintf("SELECT balance FROM shard_%04d.accounts WHERE id = $1", s), nil); err != nil {
				return err
			}
		}
		// The session's search_path stays shard 0's: the fixed path.
		conns[i] = pc
	}
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(fixed bool) (shard, tenant, id int) {
		tenant = rng.IntN(o.tenants)
		if fixed {
			tenant = rng.IntN(max(o.tenants/o.shards, 1)) * o.shards // shard 0's tenants
		}
		return tenant % o.shards, tenant, tenant*rowsPer + 1 + rng.IntN(rowsPer)
	}
	res := make([][]float64, len(vs))
	for r := 0; r < o.setupCost; r++ {
		for i, v := range vs {
			pc := conns[i]
			for k := 0; k < 200; k++ { // warm up: caches, plans
				shard, tenant, id := pick(v.fixed)
				if err := v.run(ctx, pc, shard, tenant, id); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
			t0 := procCPU([]int{int(pc.PID())})
			for k := 0; k < setupCostTxns; k++ {
				shard, tenant, id := pick(v.fixed)
				if err := v.run(ctx, pc, shard, tenant, id); err != nil {
					return fmt.Errorf("%s: %w", v.name, err)
				}
			}
			res[i] = append(res[i], float64(procCPU([]int{int(pc.PID())})-t0)/float64(time.Microsecond)/setupCostTxns)
		}
	}
	fmt.Fprintf(w, "server CPU per transaction on one backend (µs; %d transactions per variant and round, %d shards, %d tenants, clock tick %s)\n\n",
		setupCostTxns, o.shards, o.tenants, time.Second/clockTick)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "variant\t")
	for r := 1; r <= o.setupCost; r++ {
		fmt.Fprintf(tw, "round %d\t", r)
	}
	fmt.Fprintln(tw, "lowest\t")
	for i, v := range vs {
		fmt.Fprintf(tw, "%s\t", v.name)
		for _, x := range res[i] {
			fmt.Fprintf(tw, "%.1f\t", x)
		}
		fmt.Fprintf(tw, "%.1f\t\n", slices.Min(res[i]))
	}
	return tw.Flush()
}
