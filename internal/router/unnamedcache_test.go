package router

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestUnnamedTextsInTurnAllocations: a client that parses a few texts in
// turn as the unnamed statement (pgbench -M extended, routerbench's
// extended cases; drivers without a statement cache) has each text copied,
// classified and allocated once, not per Parse: a round trip allocates
// nothing. The router kept only the last unnamed statement, which texts in
// turn never matched: 3 allocations per round trip (the text, its stmtDef,
// the parameter types). A set_config of the tenant, which the router
// answers itself (routerbench's extended script), allocates the tenant's
// id and the session's published copy of it (session.setView), no longer
// each message of the answer as well: AllocsPerRun counts 3 for these two
// heap objects (the 2-byte id is a tiny allocation), and counted 10 before.
// routerbench's "4 stmts" transaction (BEGIN, a transaction-local
// set_config, the select, END: 4 round trips) counted 31, the guard's scan
// of the set_config text among them; now the tenant's id (on PostgreSQL 18
// also when the backend reports each change of search_path).
func TestUnnamedTextsInTurnAllocations(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	setTenant := func(tenant string) []byte {
		return hotExtendedArg("SELECT pg_catalog.set_config('pgtenant.tenant', $1, false)", tenant)
	}
	var txns [][]byte // 4 round trips a transaction
	for _, tenant := range []string{"t1", "t2", "t3"} {
		txns = append(txns, hotExtendedArg("BEGIN"), hotExtendedArg("SELECT set_config('pgtenant.tenant', $1, true)", tenant),
			hotExtendedArg("SELECT val FROM items WHERE id = $1::int", "1"), hotExtendedArg("END"))
	}
	for _, c := range []struct {
		name string
		reqs [][]byte
		per  int // round trips per run
		want float64
	}{
		{"routerbench 4 stmts", txns, 4, 1},
		{"selects", [][]byte{
			hotExtendedArg("SELECT val FROM items WHERE id = $1", "1"),
			hotExtendedArg("SELECT shard FROM whoami WHERE $1::int = 1", "1"),
			hotExtendedArg("SELECT count(*) FROM items WHERE id < $1", "3"),
		}, 1, 0},
		{"set_config", [][]byte{setTenant("t1"), setTenant("t2"), setTenant("t3")}, 1, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			rc := openHot(t, s, "t1")
			for i := 0; i < 12; i++ { // warm the pool and the buffers
				rc.roundTrip(t, c.reqs[i%len(c.reqs)])
			}
			i := 0
			got := testing.AllocsPerRun(200, func() {
				for range c.per {
					rc.roundTrip(t, c.reqs[i%len(c.reqs)])
					i++
				}
			})
			t.Logf("%.0f allocations per run of %d round trips", got, c.per)
			if got > c.want {
				t.Errorf("%.0f allocations per run of %d round trips, want at most %.0f", got, c.per, c.want)
			}
		})
	}
}

// TestUnnamedTextsInTurn: the texts a session parsed before as the unnamed
// statement, parsed again in turn, with simple Queries (which drop the
// server's unnamed statement) and other tenants' backends in between, each
// run their own statement, for the tenant named at the time.
func TestUnnamedTextsInTurn(t *testing.T) {
	ctx := ctx(t)
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "", pgx.QueryExecModeExec)
	const (
		whoami = "SELECT shard FROM whoami WHERE $1::int = 1"
		val    = "SELECT val FROM items WHERE id = $1"
		setT   = "SELECT pg_catalog.set_config('pgtenant.tenant', $1, false)"
	)
	for i := 0; i < 24; i++ {
		tenant := []string{"t1", "t2", "t3"}[i%3]
		var got string
		if err := c.QueryRow(ctx, setT, tenant).Scan(&got); err != nil || got != tenant {
			t.Fatalf("round %d: set_config: %q, %v", i, got, err)
		}
		var shard int
		if err := c.QueryRow(ctx, whoami, 1).Scan(&shard); err != nil || shard != shardOf(tenant) {
			t.Fatalf("round %d, tenant %s: shard %d, %v; want %d", i, tenant, shard, err, shardOf(tenant))
		}
		if err := c.QueryRow(ctx, val, i%5+1).Scan(&got); err != nil || got != shardVal(tenant, i%5+1) {
			t.Fatalf("round %d, tenant %s: val %q, %v; want %q", i, tenant, got, err, shardVal(tenant, i%5+1))
		}
		if i%4 == 3 {
			// A simple Query drops the unnamed statement, on the server
			// and for the router.
			if _, err := c.Exec(ctx, "SELECT 1", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatalf("round %d: simple query: %v", i, err)
			}
		}
	}
}

func shardVal(tenant string, id int) string {
	return fmt.Sprintf("shard%d-%d", shardOf(tenant), id)
}
