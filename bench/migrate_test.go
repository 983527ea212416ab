package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// BenchmarkMigrate18Tables4Nodes is the acceptance run for migrations: four
// local Postgres clusters started the way `pgtenant dev up` starts them
// (localpg defaults, fsync on), 256 shard schemas spread evenly, and the
// 18-table energy-monitoring set in testdata/migrations18 applied to every
// shard with migrate.Up at its default concurrency. Each iteration starts
// from empty schemas; only Up is timed. It checks that 4,608 tables exist
// and reports the time of one run as s/run. PGTENANT_BENCH_CONCURRENCY
// overrides the workers per node.
//
//	go test ./bench/ -run '^$' -bench Migrate18Tables4Nodes -benchtime 1x
func BenchmarkMigrate18Tables4Nodes(b *testing.B) {
	const (
		nodes  = 4
		shards = 256
		tables = 18
	)
	ctx := context.Background()
	var targets []migrate.Target
	dsns := make([]string, nodes)
	for i := range nodes {
		dir, err := pgtest.TempDir("bench-migrate") // reaped with its server if this binary dies
		if err != nil {
			b.Fatal(err)
		}
		c := localpg.New(dir, 0)
		if err := c.Init(ctx); err != nil {
			b.Fatalf("init node %d: %v", i, err)
		}
		if err := c.Start(ctx); err != nil {
			b.Fatalf("start node %d: %v", i, err)
		}
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Stop(ctx); err != nil {
				b.Error(err)
			}
			os.RemoveAll(dir)
		})
		dsns[i] = c.DSN("postgres")
	}
	for s := range shards {
		n := s % nodes
		targets = append(targets, migrate.Target{
			Shard: s, Schema: fmt.Sprintf("shard_%04d", s), Node: fmt.Sprintf("node%d", n), DSN: dsns[n],
		})
	}
	conns := make([]*pgx.Conn, nodes)
	for i, dsn := range dsns {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close(ctx)
		conns[i] = c
	}
	fsys := os.DirFS("testdata/migrations18")
	var opts migrate.Options
	if v := os.Getenv("PGTENANT_BENCH_CONCURRENCY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatalf("PGTENANT_BENCH_CONCURRENCY: %v", err)
		}
		opts.Concurrency = n
	}

	b.ResetTimer()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		for s, t := range targets {
			q := "DROP SCHEMA IF EXISTS " + pgx.Identifier{t.Schema}.Sanitize() + " CASCADE; CREATE SCHEMA " + pgx.Identifier{t.Schema}.Sanitize()
			if _, err := conns[s%nodes].Exec(ctx, q); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		start := time.Now()
		sum, err := migrate.Up(ctx, fsys, targets, opts)
		total += time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatalf("migrate up: %v", err)
		}
		if sum.Migrated != shards {
			b.Fatalf("migrated %d shards, want %d", sum.Migrated, shards)
		}
		var got int
		for _, c := range conns {
			var n int
			err := c.QueryRow(ctx, `SELECT count(*) FROM pg_tables
				WHERE schemaname LIKE 'shard\_%' AND tablename <> 'goose_db_version'`).Scan(&n)
			if err != nil {
				b.Fatal(err)
			}
			got += n
		}
		if got != shards*tables {
			b.Fatalf("%d tables across %d nodes, want %d", got, nodes, shards*tables)
		}
		st, err := migrate.Status(ctx, fsys, targets)
		if err != nil {
			b.Fatalf("migrate status: %v", err)
		}
		for _, s := range st {
			if s.Behind() {
				b.Fatalf("shard %d is behind: pending %v", s.Target.Shard, s.Pending)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "s/run")
	b.ReportMetric(float64(shards*tables), "tables")
}
