package router

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// A described statement (named, and the unnamed one) a server found stale
// after DDL changed one shard's table, then bound and described for a
// tenant of another shard whose table did not change. PostgreSQL
// re-analyses a prepared statement under the search_path in force when it
// runs, and refuses it only when that analysis gives another result shape
// than the statement was prepared with: straight against the server (the
// same steps with SET search_path for the tenant switch) the other shard's
// table runs it, the changed one still refuses it. The router kept such a
// statement stale for every tenant until the client prepared it again
// (0A000 for the other shard too); now each backend's statement is checked
// where it runs. The steps are run against PostgreSQL first, so the
// answers wanted are the server's.
func TestStaleStatementOtherShard(t *testing.T) {
	changed, other := "t1", "t3" // shards 1 and 3, both on node b
	if shardOf(changed)%2 != 1 || shardOf(other)%2 != 1 {
		t.Fatalf("tenants %s and %s: want two shards of node b", changed, other)
	}
	schema := func(tenant string) string { return pgx.Identifier{placement.SchemaName(shardOf(tenant))}.Sanitize() }
	run := func(t *testing.T, fe *pgproto3.Frontend, nc net.Conn, table string, use func(tenant string) string, switched []string) {
		ddlChanged, ddlOther := shardDDL(t, changed), shardDDL(t, other)
		for _, ddl := range []func(string, string){ddlChanged, ddlOther} {
			ddl("CREATE TABLE %s (a int, b text); INSERT INTO %[1]s VALUES (1, 'x')", table)
			defer ddl("DROP TABLE %s", table)
		}
		// The switch goes by Parse/Bind/Execute of a named statement: a
		// Query would replace the unnamed statement (26000 after it).
		switches := 0
		switchTo := func(tenant string) rawStep {
			switches++
			name := fmt.Sprintf("use_%d", switches)
			return rawStep{name: "use " + tenant, send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: name, Query: use(tenant)}, &pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{},
			}, want: switched}
		}
		bindBoth := func(name string, want ...string) rawStep {
			return rawStep{name: name, send: []pgproto3.FrontendMessage{
				&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Bind{PreparedStatement: "s_other"}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Describe{ObjectType: 'S', Name: "s_other"}, &pgproto3.Sync{},
			}, want: want}
		}
		runRawSteps(t, []*pgproto3.Frontend{fe}, []net.Conn{nc}, ddlChanged, table, []rawStep{
			switchTo(changed),
			{name: "prepare and describe", send: []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "SELECT a, b FROM " + table},
				&pgproto3.Describe{ObjectType: 'S'},
				&pgproto3.Parse{Name: "s_other", Query: "SELECT a, b FROM " + table},
				&pgproto3.Describe{ObjectType: 'S', Name: "s_other"},
				&pgproto3.Sync{},
			}, want: []string{"1", "?", "T", "1", "?", "T", "Z I"}},
			{name: "alter", ddl: "ALTER TABLE %s ALTER COLUMN a TYPE text USING 'changed:' || a"},
			bindBoth("changed shard", "E 0A000", "Z I", "E 0A000", "Z I", "?", "E 0A000", "Z I"),
			switchTo(other),
			bindBoth("other shard", "2", "D 1", "C", "Z I", "2", "D 1", "C", "Z I", "?", "T", "Z I"),
			switchTo(changed),
			bindBoth("changed shard again", "E 0A000", "Z I", "E 0A000", "Z I", "?", "E 0A000", "Z I"),
		})
	}
	t.Run("postgres", func(t *testing.T) {
		pc, err := pgconn.Connect(context.Background(), nodeDSN(nodeB))
		if err != nil {
			t.Fatal(err)
		}
		// From PostgreSQL 18 the server reports search_path
		// (ParameterStatus, "?"); the router keeps the shard's path to
		// itself.
		switched := []string{"1", "2", "C", "Z I"}
		if v, _ := strconv.Atoi(strings.SplitN(pc.ParameterStatus("server_version"), ".", 2)[0]); v >= 18 {
			switched = []string{"1", "2", "C", "?", "Z I"}
		}
		hj, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		defer hj.Conn.Close()
		run(t, hj.Frontend, hj.Conn, "stale_other_direct", func(tenant string) string { return "SET search_path = " + schema(tenant) + ", public" }, switched)
	})
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			fe, nc := rawConn(t, s, "")
			run(t, fe, nc, "stale_other_"+string(mode), func(tenant string) string { return "SET pgtenant.tenant = '" + tenant + "'" }, []string{"1", "2", "C", "Z I"})
		})
	}
}
