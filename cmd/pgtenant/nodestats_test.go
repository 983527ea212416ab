package main

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/nodestats"
)

// node stats reads every node at once: the table names what Postgres' views
// say (an idle transaction, dead tuples), a node that does not answer is
// reported with its error and makes the command exit 1, and --json parses
// into its documented shape.
func TestNodeStats(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	dsnA := nodeA.NewDatabase(t)
	mustRun(t, "node", "add", "a", dsnA)
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "node", "add", "c", nodeB.NewDatabase(t))

	ctx := context.Background()
	connA, err := pgx.Connect(ctx, dsnA)
	if err != nil {
		t.Fatal(err)
	}
	defer connA.Close(ctx)
	for _, sql := range []string{
		`CREATE TABLE public.readings (id int)`,
		`INSERT INTO public.readings SELECT generate_series(1, 1000)`,
		`DELETE FROM public.readings WHERE id <= 400`,
		`SELECT pg_stat_force_next_flush()`,
		`BEGIN`, `SELECT 'held-by-test'`,
	} {
		if _, err := connA.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Node c's server goes away: its DSN now names a port nothing listens on.
	cat, err := pgx.Connect(ctx, os.Getenv("PGTENANT_CATALOG"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close(ctx)
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Exec(ctx, `UPDATE pgtenant.nodes SET dsn = $1 WHERE name = 'c'`,
		fmt.Sprintf("postgres://postgres@127.0.0.1:%d/gone?sslmode=disable", port)); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := pgtenant(t, "node", "stats")
	if code != 1 || !strings.Contains(errOut, "1 of 3 nodes did not answer") {
		t.Fatalf("node stats with node c gone: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{
		"node a: database ", "node b: database ", "  cache hit rate", "  index hit rate", "  connections",
		"1 idle in transaction", "SELECT 'held-by-test'",
		"statements: pg_stat_statements not installed", "  disk free ",
		"node c: unreachable: ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("node stats output lacks %q:\n%s", want, out)
		}
	}
	for _, re := range []string{`\n  dead tuples +400 +\(600 live; 1 table\(s\) past`, `\n  public\.readings +400 +600 +50 \(due\) +never\n`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("node stats output does not match %s:\n%s", re, out)
		}
	}
	if i, j, k := strings.Index(out, "node a:"), strings.Index(out, "node b:"), strings.Index(out, "node c:"); !(i < j && j < k) {
		t.Errorf("nodes not in catalog order:\n%s", out)
	}
	t.Logf("node stats:\n%s", out)

	out = mustRun(t, "node", "stats", "a", "--tables", "1")
	if strings.Contains(out, "node b") || !strings.Contains(out, "public.readings") {
		t.Errorf("node stats a:\n%s", out)
	}
	if code, _, errOut := pgtenant(t, "node", "stats", "nosuch"); code != 1 || !strings.Contains(errOut, `node "nosuch" is unknown (SQLSTATE 42704)`) {
		t.Errorf("node stats nosuch: exit %d %s", code, errOut)
	}

	var got []nodestats.Result
	jsonOut(t, 1, &got, "node", "stats")
	if len(got) != 3 || got[0].Node != "a" || got[1].Node != "b" || got[2].Node != "c" {
		t.Fatalf("node stats --json: %+v", got)
	}
	a, c := got[0], got[2]
	if a.Stats == nil || a.Error != "" || a.Stats.Vacuum.DeadTuples != 400 || a.Stats.Connections.ByState["idle in transaction"] != 1 ||
		a.Stats.LongestTransaction == nil || a.Stats.LongestTransaction.Query != "SELECT 'held-by-test'" || a.Stats.DatabaseBytes <= 0 ||
		a.Stats.Disk.FreeBytes == nil {
		t.Errorf("node a: %+v", a)
	}
	if c.Stats != nil || !strings.Contains(c.Error, "unreachable") {
		t.Errorf("node c: %+v", c)
	}
	jsonOut(t, 0, &got, "node", "stats", "b")
	if len(got) != 1 || got[0].Stats == nil || got[0].Stats.Vacuum.Tables == nil || got[0].Stats.Slots == nil {
		t.Errorf("node stats b --json: %+v", got)
	}
}
