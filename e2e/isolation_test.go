package e2e

import (
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/router"
)

// Tenant isolation as psql users meet it, in transaction mode with one
// backend connection per node: tenants t1 and t3 (shards 1 and 3, node b)
// share it. Each psql run is a client of its own. (In transaction mode a
// client's own temporary table is gone with its transaction too: the next
// transaction may run on another backend.)
func TestPsqlIsolation(t *testing.T) {
	c := newCluster(t, router.Config{Pool: router.PoolConfig{MaxSize: 1}})
	steps := []struct {
		name, tenant, script string
		want                 string   // stdout, when psql must succeed
		wantErr              []string // stderr parts, when psql must fail
	}{
		{name: "temp table refused", tenant: "t1",
			script:  "CREATE TEMP TABLE leak AS SELECT 'secret of t1' AS v;\n",
			wantErr: []string{"temporary objects are not supported in transaction pool mode", "HINT:", "ON COMMIT DROP"}},
		{name: "temp table made in a DO block", tenant: "t1",
			script: "DO $$ BEGIN CREATE TEMP TABLE leak AS SELECT 'secret of t1'::text AS v; END $$ \\; SELECT count(*) FROM pg_temp.leak;\n",
			want:   "1\n"},
		{name: "next client on the same backend", tenant: "t3",
			script:  "SELECT v FROM pg_temp.leak;\n",
			wantErr: []string{`relation "pg_temp.leak" does not exist`}},
		{name: "ON COMMIT DROP in a transaction", tenant: "t3",
			script: "BEGIN;\nCREATE TEMP TABLE scratch (v int) ON COMMIT DROP;\nINSERT INTO scratch VALUES (1), (2);\nSELECT sum(v) FROM scratch;\nCOMMIT;\n",
			want:   "3\n"},
		{name: "SQL PREPARE refused", tenant: "t3",
			script:  "PREPARE q AS SELECT shard FROM shard_info;\n",
			wantErr: []string{"SQL PREPARE and EXECUTE are not supported in transaction pool mode", "HINT:"}},
		{name: "two tenants in one query",
			script:  "/* tenant: t1 */ SELECT 1 \\; /* tenant: t3 */ INSERT INTO items (id, tenant, name, qty) VALUES (399, 't3', 'x', 1);\n",
			wantErr: []string{`names tenant "t1" and tenant "t3"`}},
		{name: "nothing of the refused query ran (t3's row did not land in t1's shard)", tenant: "t1",
			script: "SELECT count(*) FROM items WHERE id = 399;\n/* tenant: t3 */ SELECT count(*) FROM items WHERE id = 399;\n",
			want:   "0\n0\n"},
		{name: "search_path in a DO block", tenant: "t3",
			script:  "DO $$ BEGIN PERFORM set_config('search_path', 'shard_0001', false); END $$;\n",
			wantErr: []string{`setting "search_path" is managed by pgtenant`, "HINT:"}},
		{name: "tenant id through set_config", tenant: "t3",
			script:  "SELECT pg_catalog.set_config(E'pgtenant.tenant\\x5fid', 't1', true);\n",
			wantErr: []string{`setting "pgtenant.tenant_id" is managed by pgtenant`}},
		{name: "still on t3's shard", tenant: "t3",
			script: "SELECT shard, current_setting('pgtenant.tenant_id'), current_setting('search_path') FROM shard_info;\n",
			want:   "3|t3|shard_0003, public, pg_temp\n"},
	}
	for _, st := range steps {
		out, errOut, err := psql(t, c, st.tenant, st.script)
		if st.wantErr == nil {
			if err != nil || out != st.want {
				t.Errorf("%s: stdout %q, stderr %q, err %v; want %q", st.name, out, errOut, err, st.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: psql succeeded (stdout %q), want it to fail", st.name, out)
			continue
		}
		for _, w := range st.wantErr {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s: stderr %q lacks %q", st.name, errOut, w)
			}
		}
	}
}
