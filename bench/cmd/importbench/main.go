// Command importbench measures `pgtenant import`: a legacy database shaped
// like the demo's energy app (internal/demo: five tenant tables, a child
// table, a reference table) on one local Postgres cluster, copied into the
// shards of two nodes on two other clusters (default settings, fsync on).
// Each -parallel value is one round (a fresh catalog and fresh node
// databases; give them interleaved, e.g. 1,4,1,4): it prints the bytes
// copied (the binary COPY stream), the legacy tables' size on disk, rows
// and MB/s. With -cutover, the last round goes on: a router serves every
// tenant, -writers clients write through it (a ledger of acknowledged
// inserts), the change stream follows, every shard is cut over in waves of
// -cutover-parallel, and it prints each shard's pause, the clients' max
// latency and whether every acknowledged write is on the shards once; with
// -timeline also when each step of the cutovers' pause came. See
// bench/README.md.
//
//	go run ./bench/cmd/importbench [-tenants 1000] [-hours 900] [-shards 64] [-parallel 4,1,4] [-cutover [-timeline]]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
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
	dir             string
	tenants, hours  int
	shards          int
	parallel        []int
	keepTriggers    []bool
	maxRate         int64
	unitMB          int
	cutover         bool
	writers         int
	cutoverParallel int
	cpuProfile      string
	timeline        bool
}

func main() {
	var o options
	var par string
	flag.StringVar(&o.dir, "dir", "", "directory for the clusters; empty means a temporary one, removed at the end")
	flag.IntVar(&o.tenants, "tenants", 1000, "tenants in the legacy database")
	flag.IntVar(&o.hours, "hours", 900, "hourly readings per meter (the bulk of the data; 900 with 1000 tenants is ~1.2 GB)")
	flag.IntVar(&o.shards, "shards", 64, "shards")
	flag.StringVar(&par, "parallel", "4,1,4", "units copied at once; one round per value (4t: with foreign key checks and triggers on the nodes)")
	flag.Int64Var(&o.maxRate, "max-rate", 0, "bytes per second cap (0: none)")
	flag.IntVar(&o.unitMB, "unit-mb", 0, "MB of heap per unit of work (0: the default, 64)")
	flag.BoolVar(&o.cutover, "cutover", false, "after the last round: writers through a router, follow, cut over every shard, finish")
	flag.IntVar(&o.writers, "writers", 8, "clients writing through the router during -cutover")
	flag.IntVar(&o.cutoverParallel, "cutover-parallel", 1, "shards cut over at once after the canary (1, as the default --parallel of pgtenant import cutover --all)")
	flag.BoolVar(&o.timeline, "timeline", false, "with -cutover: print when each step of the cutovers' pause came (the marker's trip through the stream included)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the copies (Importer.Start of every round) to this file")
	flag.Parse()
	for _, p := range strings.Split(par, ",") {
		p = strings.TrimSpace(p)
		keep := strings.HasSuffix(p, "t")
		n, err := strconv.Atoi(strings.TrimSuffix(p, "t"))
		if err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "importbench: -parallel: give numbers such as 1,4 (4t: keep foreign key checks and triggers on the nodes)")
			os.Exit(2)
		}
		o.parallel = append(o.parallel, n)
		o.keepTriggers = append(o.keepTriggers, keep)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "importbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer) error {
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "importbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	os.Chmod(dir, 0o755)
	var clusters []*localpg.Cluster
	defer func() {
		for _, c := range clusters {
			c.Stop(context.Background())
		}
	}()
	for _, name := range []string{"legacy", "n1", "n2"} {
		c := localpg.New(filepath.Join(dir, name), 0)
		// Init of a -dir kept from an earlier run (its seeded legacy
		// database) creates nothing and reads the cluster's port.
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("init %s: %w", name, err)
		}
		if err := c.StartOnFreePort(ctx); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		clusters = append(clusters, c)
	}
	t0 := time.Now()
	legacyDSN := clusters[0].DSN("legacy")
	ids := demo.TenantIDs(o.tenants)
	seeded, err := seededBefore(ctx, clusters[0].DSN("postgres"))
	if err != nil {
		return err
	}
	if !seeded {
		if err := seed(ctx, clusters[0].DSN("postgres"), legacyDSN, ids, o.hours); err != nil {
			return err
		}
	}
	conn, err := pgx.Connect(ctx, legacyDSN)
	if err != nil {
		return err
	}
	var size int64
	var rows int64
	err = conn.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid))::bigint, sum(c.reltuples)::bigint FROM pg_class c
		WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname <> 'energy_units'`).Scan(&size, &rows)
	conn.Exec(ctx, `ANALYZE`)
	conn.QueryRow(ctx, `SELECT sum(c.reltuples)::bigint FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'`).Scan(&rows)
	conn.Close(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "legacy database: %d tenants, %d rows, %.1f MB on disk (tables and indexes), seeded in %s\n", o.tenants, rows, float64(size)/1e6, time.Since(t0).Round(time.Second))
	fmt.Fprintf(out, "load average at the start: %s\n\n", loadavg())
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintf(out, "%-6s %-9s %-8s %-12s %-10s %-10s %-18s %-24s %s\n", "round", "parallel", "shards", "rows", "copy MB", "time", "MB/s (copy/disk)", "CPU s legacy/n1/n2 +go", "load average")
	for i, p := range o.parallel {
		last := i == len(o.parallel)-1
		r, err := importOnce(ctx, o, clusters, legacyDSN, i, p, o.keepTriggers[i], last && o.cutover)
		if err != nil {
			return err
		}
		res := r.res
		sec := res.Duration.Seconds()
		pl := strconv.Itoa(p)
		if o.keepTriggers[i] {
			pl += " (fk)"
		}
		cpu := fmt.Sprintf("%s = %.1f", r.cpu, r.cpu.total().Seconds())
		fmt.Fprintf(out, "%-6d %-9s %-8d %-12d %-10.1f %-10s %-18s %-24s %s\n", i+1, pl, res.Copied, res.Rows, float64(res.Bytes)/1e6, res.Duration.Round(time.Millisecond),
			fmt.Sprintf("%.1f / %.1f", float64(res.Bytes)/1e6/sec, float64(size)/1e6/sec), cpu, loadavg())
		if last && o.cutover {
			err = cutover(ctx, o, r, ids, out)
		}
		r.close()
		if err != nil {
			return err
		}
		// The node databases go, so the disk holds one copy at a time.
		for _, cl := range clusters[1:] {
			if err := exec(ctx, cl.DSN("postgres"), fmt.Sprintf(`DROP DATABASE IF EXISTS app%d WITH (FORCE)`, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// seededBefore reports whether the legacy cluster (of a -dir kept from an
// earlier run) holds a seeded legacy database already; one left half seeded
// is dropped.
func seededBefore(ctx context.Context, adminDSN string) (bool, error) {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())
	var seeded bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_database WHERE datname = 'legacy_seeded')`).Scan(&seeded); err != nil {
		return false, err
	}
	if !seeded {
		_, err = conn.Exec(ctx, `DROP DATABASE IF EXISTS legacy WITH (FORCE)`)
	}
	// Node and catalog databases of an earlier run go.
	return seeded, err
}

// seed creates and fills the legacy database, then marks it seeded (an
// empty database legacy_seeded) for a later run with the same -dir.
func seed(ctx context.Context, adminDSN, legacyDSN string, ids []string, hours int) error {
	if err := exec(ctx, adminDSN, `CREATE DATABASE legacy`); err != nil {
		return err
	}
	ddl, err := demo.LegacySchema()
	if err != nil {
		return err
	}
	if err := exec(ctx, legacyDSN, ddl); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, legacyDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for i := 0; i < len(ids); i += 100 {
		if err := demo.SeedLegacy(ctx, conn, "public", ids[i:min(i+100, len(ids))], hours); err != nil {
			return err
		}
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return err
	}
	return exec(ctx, adminDSN, `CREATE DATABASE legacy_seeded`)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// round is one import: its catalog, importer and node databases.
type round struct {
	res *importer.StartResult
	// cpu is the CPU time the clusters and this process used during Start.
	cpu    cpuTimes
	cat    *catalog.Catalog
	catDSN string
	im     *importer.Importer
	nodes  map[string]string // node → DSN
	legacy string
}

func (r *round) close() { r.cat.Close() }

// importOnce runs one import of the legacy database into a fresh catalog
// and fresh node databases (run i).
func importOnce(ctx context.Context, o options, clusters []*localpg.Cluster, legacyDSN string, i, parallel int, keepTriggers, keep bool) (*round, error) {
	catDB := fmt.Sprintf("catalog%d", i)
	for _, cl := range clusters[1:] {
		for _, db := range []string{catDB, fmt.Sprintf("app%d", i)} {
			if err := exec(ctx, cl.DSN("postgres"), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`); err != nil {
				return nil, err
			}
		}
	}
	if err := dropImport(ctx, legacyDSN); err != nil {
		return nil, err
	}
	catDSN := clusters[1].DSN(catDB)
	if err := exec(ctx, clusters[1].DSN("postgres"), `CREATE DATABASE `+catDB); err != nil {
		return nil, err
	}
	c := catalog.New(catDSN, slog.New(slog.DiscardHandler))
	if err := c.Open(ctx); err != nil {
		return nil, err
	}
	r := &round{cat: c, catDSN: catDSN, nodes: map[string]string{}, legacy: legacyDSN}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if err := c.Init(ctx, o.shards); err != nil {
		return nil, err
	}
	var sn []shared.Node
	for k, cl := range clusters[1:] {
		name := fmt.Sprintf("n%d", k+1)
		db := fmt.Sprintf("app%d", i)
		if err := exec(ctx, cl.DSN("postgres"), `CREATE DATABASE `+db); err != nil {
			return nil, err
		}
		if _, err := c.AddNode(ctx, name, cl.DSN(db)); err != nil {
			return nil, err
		}
		sn = append(sn, shared.Node{Name: name, DSN: cl.DSN(db)})
		r.nodes[name] = cl.DSN(db)
	}
	if _, err := c.CreateShards(ctx); err != nil {
		return nil, err
	}
	reg := tables.New(c.Pool())
	for _, rule := range []tables.Table{
		{Name: "customers", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "buildings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meters", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "readings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "tariffs", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meter_notes", Kind: tables.KindChild, Parent: "meters", ParentKey: "meter_id", ParentColumn: "id"},
		{Name: "energy_units", Kind: tables.KindShared},
	} {
		if err := reg.Set(ctx, rule); err != nil {
			return nil, err
		}
	}
	im := importer.New(c, slog.New(slog.DiscardHandler))
	r.im = im
	if _, err := im.Init(ctx, importer.InitOptions{DSN: legacyDSN, Node: "legacy", RegisterTenants: true}); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "importbench-files-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if _, err := im.Baseline(ctx, importer.BaselineOptions{Dir: tmp + "/m", ReferenceDir: tmp + "/r"}); err != nil {
		return nil, err
	}
	ms, err := shared.ReadMigrations(os.DirFS(tmp + "/r"))
	if err != nil {
		return nil, err
	}
	if _, err := shared.Migrate(ctx, sn, "public", ms); err != nil {
		return nil, err
	}
	shards, err := c.Shards(ctx)
	if err != nil {
		return nil, err
	}
	var targets []migrate.Target
	for _, s := range shards {
		targets = append(targets, migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: r.nodes[s.Node]})
	}
	if _, err := migrate.Up(ctx, os.DirFS(tmp+"/m"), targets, migrate.Options{}); err != nil {
		return nil, err
	}
	cpu0 := readCPU(clusters)
	r.res, err = im.Start(ctx, importer.StartOptions{Parallel: parallel, MaxRate: o.maxRate, UnitBytes: int64(o.unitMB) << 20, KeepTriggers: keepTriggers})
	r.cpu = readCPU(clusters).sub(cpu0)
	if err != nil {
		return nil, err
	}
	if !keep {
		// The slot and publication go, so the next run starts afresh.
		if err := dropImport(ctx, legacyDSN); err != nil {
			return nil, err
		}
	}
	ok = true
	return r, nil
}

func dropImport(ctx context.Context, legacyDSN string) error {
	return exec(ctx, legacyDSN, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database();
		DROP PUBLICATION IF EXISTS pgtenant_import; DROP SCHEMA IF EXISTS pgtenant_import CASCADE`)
}

func exec(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%.60s: %w", sql, err)
	}
	return nil
}
