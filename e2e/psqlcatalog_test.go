package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/router"
)

// TestPsqlDescribe: psql's \d, \dt and \dx through the router, with and
// without a tenant (issue 11, item 1). Without a tenant psql's catalog
// queries run on the node of shard 0 with search_path pg_catalog: \d and
// \dt find no relations (no tenant, no tables), \dx lists that node's
// extensions. With a tenant they run on its shard: \d and \dt list the
// shard's tables, \d TABLE describes one, \dx lists its node's extensions.
func TestPsqlDescribe(t *testing.T) {
	c := newCluster(t, router.Config{})
	ctx := context.Background()
	// An extension on node b only, to tell the nodes apart in \dx.
	conn, err := pgx.Connect(ctx, c.nodeDSN["b"])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE EXTENSION citext"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	for _, pm := range []router.PoolMode{router.PoolTransaction, router.PoolSession} {
		if pm == router.PoolSession {
			c = newCluster(t, router.Config{PoolMode: pm})
			conn, err := pgx.Connect(ctx, c.nodeDSN["b"])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "CREATE EXTENSION citext"); err != nil {
				t.Fatal(err)
			}
			conn.Close(ctx)
		}
		t.Run(string(pm), func(t *testing.T) {
			cases := []struct {
				name, tenant, script string
				want                 []string // lines of stdout, in order
				wantErr              string   // in stderr
			}{
				{name: `\dt without a tenant`, script: "\\dt\n", wantErr: "Did not find any relations."},
				{name: `\d without a tenant`, script: "\\d\n", wantErr: "Did not find any relations."},
				{name: `\d items without a tenant`, script: "\\d items\n", wantErr: `Did not find any relation named "items".`},
				{name: `\dx without a tenant`, script: "\\dx\n", want: []string{"plpgsql|"}},
				{name: `\dt with a tenant`, tenant: "t3", script: "\\dt\n", want: []string{"shard_0003|items|table|", "shard_0003|orders|table|", "shard_0003|shard_info|table|"}},
				{name: `\d with a tenant`, tenant: "t4", script: "\\d\n", want: []string{"shard_0004|items|table|", "shard_0004|orders|table|", "shard_0004|shard_info|table|"}},
				{name: `\d items with a tenant`, tenant: "t3", script: "\\d items\n", want: []string{"id|integer||not null|", "tenant|text||not null|", "shard|integer||not null|3"}},
				{name: `\dx with a tenant on node b`, tenant: "t3", script: "\\dx\n", want: []string{"citext|", "plpgsql|"}},
				{name: `SET in psql, then \dt`, script: "SET pgtenant.tenant = 't6';\n\\dt\n", want: []string{"shard_0006|items|table|"}},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					out, errOut, err := psql(t, c, tc.tenant, "\\set QUIET off\n"+tc.script)
					if tc.wantErr != "" {
						if !strings.Contains(errOut, tc.wantErr) {
							t.Fatalf("stderr %q does not say %q (err %v, stdout %q)", errOut, tc.wantErr, err, out)
						}
						if strings.Contains(errOut, "3D000") || strings.Contains(errOut, "no tenant") {
							t.Fatalf("refused: %s", errOut)
						}
						return
					}
					if err != nil {
						t.Fatalf("psql: %v\n%s", err, errOut)
					}
					rest := out
					for _, w := range tc.want {
						i := strings.Index(rest, w)
						if i < 0 {
							t.Fatalf("stdout does not have %q (in order):\n%s", w, out)
						}
						rest = rest[i+len(w):]
					}
				})
			}
		})
	}
}
