package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/router"
)

// TestExtendedTransactionControl sends BEGIN, set_config and COMMIT through
// the extended protocol (Parse/Bind/Execute/Sync), as pgbench -M extended,
// JDBC and many ORMs do, on a connection with no session tenant.
func TestExtendedTransactionControl(t *testing.T) {
	c := newCluster(t, router.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	conn := connectPgx(t, ctx, c, "", pgx.QueryExecModeExec)
	pc := conn.PgConn()
	exec := func(sql string, args ...string) *pgconn.ResultReader {
		params := make([][]byte, len(args))
		for i, a := range args {
			params[i] = []byte(a)
		}
		return pc.ExecParams(ctx, sql, params, nil, nil, nil)
	}
	for i := 0; i < 3; i++ {
		if _, err := exec("BEGIN").Close(); err != nil {
			t.Fatalf("BEGIN over the extended protocol: %v", err)
		}
		if _, err := exec("SELECT set_config('pgtenant.tenant', $1, true)", "t9").Close(); err != nil {
			t.Fatalf("set_config: %v", err)
		}
		res := exec("SELECT shard FROM shard_info").Read()
		if res.Err != nil {
			t.Fatalf("select: %v", res.Err)
		}
		if len(res.Rows) != 1 || string(res.Rows[0][0]) != "1" {
			t.Fatalf("shard = %q, want 1", res.Rows)
		}
		if _, err := exec("COMMIT").Close(); err != nil {
			t.Fatalf("COMMIT over the extended protocol: %v", err)
		}
	}
}
