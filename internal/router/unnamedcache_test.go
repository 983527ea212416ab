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
func TestUnnamedTextsInTurnAllocations(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	setTenant := func(tenant string) []byte {
		return hotExtendedArg("SELECT pg_catalog.set_config('pgtenant.tenant', $1, false)", tenant)
	}
	for _, c := range []struct {
		name string
		reqs [][]byte
		want float64
	}{
		{"selects", [][]byte{
			hotExtendedArg("SELECT val FROM items WHERE id = $1", "1"),
			hotExtendedArg("SELECT shard FROM whoami WHERE $1::int = 1", "1"),
			hotExtendedArg("SELECT count(*) FROM items WHERE id < $1", "3"),
		}, 0},
		{"set_config", [][]byte{setTenant("t1"), setTenant("t2"), setTenant("t3")}, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			rc := openHot(t, s, "t1")
			for i := 0; i < 12; i++ { // warm the pool and the buffers
				rc.roundTrip(t, c.reqs[i%len(c.reqs)])
			}
			i := 0
			if got := testing.AllocsPerRun(200, func() { rc.roundTrip(t, c.reqs[i%len(c.reqs)]); i++ }); got > c.want {
				t.Errorf("%.0f allocations per round trip, want at most %.0f", got, c.want)
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
