package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/router"
)

// psql runs the real psql binary against the router with script on stdin.
// tenant goes into PGOPTIONS ("" for none). It returns stdout and stderr
// and the error from running it.
func psql(t *testing.T, c *cluster, tenant, script string, args ...string) (string, string, error) {
	t.Helper()
	bin, err := exec.LookPath("psql")
	if err != nil {
		t.Fatalf("psql is not installed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	host, port := c.hostPort()
	cmd := exec.CommandContext(ctx, bin, append([]string{"-X", "-q", "-At", "-v", "ON_ERROR_STOP=1"}, args...)...)
	env := append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=postgres", "PGDATABASE=app", "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=10")
	if tenant != "" {
		env = append(env, "PGOPTIONS=-c pgtenant.tenant="+tenant)
	}
	cmd.Env = env
	cmd.Stdin = strings.NewReader(script)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

func TestPsql(t *testing.T) {
	c := newCluster(t, router.Config{})
	cases := []struct {
		name   string
		tenant string
		script string
		// want is psql's whole stdout.
		want string
		// fail says psql must exit non-zero, with every wantErr in stderr.
		fail    bool
		wantErr []string
	}{
		{
			name:   "startup tenant",
			tenant: "t3",
			script: "SELECT shard, node, current_setting('pgtenant.tenant_id') FROM shard_info;\nSELECT count(*) FROM items WHERE tenant = 't3';\n",
			want:   "3|b|t3\n5\n",
		},
		{
			name:   "SET tenant and comment hint",
			script: "SET pgtenant.tenant = 't4';\nSHOW pgtenant.tenant;\nSELECT shard FROM shard_info;\n/* tenant: t9 */ SELECT shard, node FROM shard_info;\nSELECT shard FROM shard_info;\n",
			want:   "t4\n4\n1|b\n4\n",
		},
		{
			name:   "transaction rolled back and committed",
			tenant: "t2",
			script: `BEGIN;
UPDATE items SET qty = 999 WHERE id = 201;
SELECT qty FROM items WHERE id = 201;
ROLLBACK;
SELECT qty FROM items WHERE id = 201;
BEGIN;
INSERT INTO items (id, tenant, name, qty) VALUES (299, 't2', 'psql', 1);
COMMIT;
SELECT shard, name FROM items WHERE id = 299;
`,
			want: "999\n10\n2|psql\n",
		},
		{
			name: "switching tenants between transactions",
			script: `BEGIN;
SET LOCAL pgtenant.tenant = 't1';
SELECT shard, node FROM shard_info;
COMMIT;
BEGIN;
SET LOCAL pgtenant.tenant = 't6';
SELECT shard, node FROM shard_info;
COMMIT;
SET pgtenant.tenant = 't15';
SELECT shard, node FROM shard_info;
`,
			want: "1|b\n6|a\n7|b\n",
		},
		{
			name:    "error with SQLSTATE",
			tenant:  "t0",
			script:  "\\set VERBOSITY verbose\nINSERT INTO items (id, tenant, name, qty) VALUES (1, 't0', 'dup', 1);\n",
			fail:    true,
			wantErr: []string{"23505", "items_pkey"},
		},
		{
			name:    "missing table",
			tenant:  "t0",
			script:  "\\set VERBOSITY verbose\nSELECT * FROM nope;\n",
			fail:    true,
			wantErr: []string{"42P01"},
		},
		{
			name:    "no tenant",
			script:  "\\set VERBOSITY verbose\nSELECT * FROM items;\n",
			fail:    true,
			wantErr: []string{"3D000", "pgtenant.tenant"},
		},
		{
			name:    "unknown tenant",
			tenant:  "nobody",
			script:  "\\set VERBOSITY verbose\nSELECT * FROM items;\n",
			fail:    true,
			wantErr: []string{"42704", "nobody"},
		},
		{
			name:    "second shard in a transaction",
			tenant:  "t1",
			script:  "\\set VERBOSITY verbose\nBEGIN;\nSELECT shard FROM shard_info;\n/* tenant: t2 */ SELECT shard FROM shard_info;\n",
			want:    "1\n",
			fail:    true,
			wantErr: []string{"25001"},
		},
		{
			name:   "cte window join and explain analyze",
			tenant: "t11",
			script: `WITH totals AS (
  SELECT i.id, i.name, sum(o.amount) AS total
  FROM items i JOIN orders o ON o.item_id = i.id
  WHERE i.tenant = 't11' GROUP BY i.id, i.name)
SELECT name, total, rank() OVER (ORDER BY total DESC, id), sum(total) OVER () FROM totals ORDER BY 3 LIMIT 2;
EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM items i JOIN orders o ON o.item_id = i.id WHERE i.tenant = 't11';
`,
			want: "item-1105|15|1|45\nitem-1104|12|2|45\n",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := psql(t, c, tc.tenant, tc.script)
			if tc.fail != (err != nil) {
				t.Fatalf("psql error = %v, want failure %v\nstdout:\n%s\nstderr:\n%s", err, tc.fail, out, errOut)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr does not mention %q:\n%s", w, errOut)
				}
			}
			if strings.Contains(tc.script, "EXPLAIN") {
				if !strings.HasPrefix(out, tc.want) || !strings.Contains(out, "(actual rows=") {
					t.Fatalf("stdout:\n%s", out)
				}
				return
			}
			if out != tc.want {
				t.Fatalf("stdout:\n%s\nwant:\n%s\nstderr:\n%s", out, tc.want, errOut)
			}
		})
	}

	t.Run("copy both ways", func(t *testing.T) {
		dir := t.TempDir()
		in := filepath.Join(dir, "in.csv")
		var b strings.Builder
		for k := 0; k < 100; k++ {
			b.WriteString(strings.Join([]string{itoa(7000 + k), "t7", "csv-" + itoa(k), itoa(k)}, ","))
			b.WriteString("\n")
		}
		if err := os.WriteFile(in, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, "out.csv")
		script := "\\copy items (id, tenant, name, qty) FROM '" + in + "' WITH (FORMAT csv)\n" +
			"\\copy (SELECT id, shard, name FROM items WHERE id >= 7000 ORDER BY id) TO '" + out + "' WITH (FORMAT csv)\n" +
			"SELECT count(*), min(shard), max(shard) FROM items WHERE id >= 7000;\n"
		stdout, errOut, err := psql(t, c, "t7", script)
		if err != nil {
			t.Fatalf("psql: %v\n%s", err, errOut)
		}
		if stdout != "100|7|7\n" {
			t.Fatalf("after \\copy from: %q", stdout)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(got)), "\n")
		if len(lines) != 100 || lines[0] != "7000,7,csv-0" || lines[99] != "7099,7,csv-99" {
			t.Fatalf("\\copy to wrote %d lines, first %q", len(lines), lines[0])
		}
	})
}

func itoa(i int) string { return strconv.Itoa(i) }
