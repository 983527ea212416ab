// Command importtrigbench measures the write overhead of `pgtenant import
// start --method trigger` on the legacy database: clients write single-row
// transactions to a legacy database shaped like the demo's energy app in
// alternating windows, without the import (its capture triggers disabled,
// no follower) and with it (the triggers on and the follower applying the
// queue to the shards), and it prints each window's transactions per second,
// p50 and p99 latency and the legacy WAL written per transaction. See
// bench/README.md.
//
//	go run ./bench/cmd/importtrigbench [-tenants 200] [-hours 24] [-clients 4] [-duration 10s] [-rounds 3]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/importer"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/shared"
	"github.com/pgtenant/pgtenant/internal/tables"
)

type options struct {
	tenants, hours, clients, rounds int
	duration                        time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.tenants, "tenants", 200, "tenants in the legacy database")
	flag.IntVar(&o.hours, "hours", 24, "hourly readings per meter")
	flag.IntVar(&o.clients, "clients", 4, "clients writing to the legacy database")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each window")
	flag.IntVar(&o.rounds, "rounds", 3, "pairs of windows (without, with), interleaved")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "importtrigbench:", err)
		os.Exit(1)
	}
}

func exec(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return string(b[:len(b)-1])
}

func run(ctx context.Context, o options, out io.Writer) error {
	dir, err := os.MkdirTemp("", "importtrigbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	var clusters []*localpg.Cluster
	defer func() {
		for _, c := range clusters {
			c.Stop(context.Background())
		}
	}()
	for _, name := range []string{"legacy", "nodes"} {
		c := localpg.New(filepath.Join(dir, name), 0)
		c.Settings = map[string]string{"wal_level": "replica"}
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("init %s: %w", name, err)
		}
		if err := c.StartOnFreePort(ctx); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		clusters = append(clusters, c)
	}
	legacyDSN := clusters[0].DSN("legacy")
	if err := exec(ctx, clusters[0].DSN("postgres"), `CREATE DATABASE legacy`); err != nil {
		return err
	}
	ids := demo.TenantIDs(o.tenants)
	lc, err := pgx.Connect(ctx, legacyDSN)
	if err != nil {
		return err
	}
	ddl, err := demo.LegacySchema()
	if err == nil {
		_, err = lc.Exec(ctx, ddl)
	}
	if err == nil {
		err = demo.SeedLegacy(ctx, lc, "public", ids, o.hours)
	}
	lc.Close(context.Background())
	if err != nil {
		return fmt.Errorf("seed the legacy database: %w", err)
	}
	for _, db := range []string{"cat", "n1", "n2"} {
		if err := exec(ctx, clusters[1].DSN("postgres"), `CREATE DATABASE `+db); err != nil {
			return err
		}
	}
	c := catalog.New(clusters[1].DSN("cat"), nil)
	if err := c.Open(ctx); err != nil {
		return err
	}
	defer c.Close()
	if err := c.Init(ctx, 16); err != nil {
		return err
	}
	var sn []shared.Node
	dsn := map[string]string{}
	for _, n := range []string{"n1", "n2"} {
		if _, err := c.AddNode(ctx, n, clusters[1].DSN(n)); err != nil {
			return err
		}
		dsn[n] = clusters[1].DSN(n)
		sn = append(sn, shared.Node{Name: n, DSN: dsn[n]})
	}
	if _, err := c.CreateShards(ctx); err != nil {
		return err
	}
	reg := tables.New(c.Pool())
	for _, r := range []tables.Table{
		{Name: "customers", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "buildings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meters", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "readings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "tariffs", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meter_notes", Kind: tables.KindChild, Parent: "meters", ParentKey: "meter_id", ParentColumn: "id"},
		{Name: "energy_units", Kind: tables.KindShared},
	} {
		if err := reg.Set(ctx, r); err != nil {
			return err
		}
	}
	im := importer.New(c, slog.New(slog.DiscardHandler))
	if _, err := im.Init(ctx, importer.InitOptions{DSN: legacyDSN, RegisterTenants: true, Method: importer.MethodTrigger}); err != nil {
		return err
	}
	if _, err := im.Baseline(ctx, importer.BaselineOptions{Dir: dir + "/m", ReferenceDir: dir + "/r"}); err != nil {
		return err
	}
	ms, err := shared.ReadMigrations(os.DirFS(dir + "/r"))
	if err != nil {
		return err
	}
	if _, err := shared.Migrate(ctx, sn, "public", ms); err != nil {
		return err
	}
	shards, err := c.Shards(ctx)
	if err != nil {
		return err
	}
	var targets []migrate.Target
	for _, s := range shards {
		targets = append(targets, migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]})
	}
	if _, err := migrate.Up(ctx, os.DirFS(dir+"/m"), targets, migrate.Options{}); err != nil {
		return err
	}
	res, err := im.Start(ctx, importer.StartOptions{Parallel: 2})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "legacy database: %d tenants, %d rows copied to 16 shards in %s; %d clients, single-row transactions, windows of %s\n",
		o.tenants, res.Rows, res.Duration.Round(time.Millisecond), o.clients, o.duration)
	fmt.Fprintf(out, "%-6s %-34s %-8s %-8s %-8s %-12s %s\n", "round", "window", "txn/s", "p50 ms", "p99 ms", "WAL B/txn", "load average")

	setTriggers := func(on bool) error {
		verb := "DISABLE"
		if on {
			verb = "ENABLE"
		}
		for _, t := range []string{"customers", "buildings", "meters", "readings", "tariffs", "meter_notes"} {
			if err := exec(ctx, clusters[0].DSN("legacy"), fmt.Sprintf(`ALTER TABLE public.%s %s TRIGGER "PGTENANT_import_capture"`, t, verb)); err != nil {
				return err
			}
		}
		return nil
	}
	var base [2][]float64
	for r := 1; r <= o.rounds; r++ {
		for _, with := range []bool{false, true} {
			if err := setTriggers(with); err != nil {
				return err
			}
			var stopFollow context.CancelFunc
			followDone := make(chan error, 1)
			if with {
				var fctx context.Context
				fctx, stopFollow = context.WithCancel(ctx)
				go func() { followDone <- im.Follow(fctx) }()
				time.Sleep(time.Second) // the follower catches up with the last window's rows
			}
			tps, p50, p99, wal, err := window(ctx, legacyDSN, ids, o)
			if stopFollow != nil {
				stopFollow()
				if ferr := <-followDone; ferr != nil && ctx.Err() == nil && ferr != context.Canceled {
					return fmt.Errorf("follow: %w", ferr)
				}
			}
			if err != nil {
				return err
			}
			name := "without the import (triggers off)"
			k := 0
			if with {
				name, k = "import following (triggers on)", 1
			}
			base[k] = append(base[k], tps)
			fmt.Fprintf(out, "%-6d %-34s %-8.0f %-8.1f %-8.1f %-12.0f %s\n", r, name, tps, p50, p99, wal, loadavg())
		}
	}
	var a, b float64
	for i := range base[0] {
		a += base[0][i]
		b += base[1][i]
	}
	fmt.Fprintf(out, "with the import: %.0f%% of the throughput without it (mean of %d interleaved pairs)\n", 100*b/a, len(base[0]))
	return nil
}

// window runs the clients for o.duration and returns transactions per
// second, p50 and p99 latency in ms, and legacy WAL bytes per transaction.
func window(ctx context.Context, legacyDSN string, ids []string, o options) (float64, float64, float64, float64, error) {
	admin, err := pgx.Connect(ctx, legacyDSN)
	if err != nil {
		return 0, 0, 0, 0, err
	}
	defer admin.Close(context.Background())
	var lsn0 string
	if err := admin.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn0); err != nil {
		return 0, 0, 0, 0, err
	}
	wctx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	var mu sync.Mutex
	var lats []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < o.clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, legacyDSN)
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			var mine []time.Duration
			for i := 0; wctx.Err() == nil; i++ {
				tenant := ids[rng.IntN(len(ids))]
				s := time.Now()
				var err error
				switch i % 5 {
				case 0, 1:
					_, err = conn.Exec(wctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'b', 'Bench', $2)`, tenant, i)
				case 2, 3:
					_, err = conn.Exec(wctx, `UPDATE buildings SET floor_area_m2 = floor_area_m2 + 1 WHERE id = (SELECT min(id) FROM buildings WHERE tenant_id = $1)`, tenant)
				case 4:
					_, err = conn.Exec(wctx, `INSERT INTO meter_notes (meter_id, note) SELECT min(id), 'n' FROM meters WHERE tenant_id = $1 HAVING min(id) IS NOT NULL`, tenant)
				}
				if err != nil {
					if wctx.Err() == nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
					}
					break
				}
				mine = append(mine, time.Since(s))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if firstErr != nil {
		return 0, 0, 0, 0, firstErr
	}
	var walBytes float64
	if err := admin.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8`, lsn0).Scan(&walBytes); err != nil {
		return 0, 0, 0, 0, err
	}
	if len(lats) == 0 {
		return 0, 0, 0, 0, fmt.Errorf("no transaction in the window")
	}
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	return float64(len(lats)) / el.Seconds(), ms(lats[len(lats)/2]), ms(lats[len(lats)*99/100]), walBytes / float64(len(lats)), nil
}
