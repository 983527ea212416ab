package router

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchmarkDescribeExecContended: eight pgx clients in describe-exec mode
// (Parse and Describe of the unnamed statement, Sync; then Bind, Execute,
// Sync: two transactions per query) on a pool of four backends in
// transaction mode, so that most Binds land on another backend than their
// Describe (or on one whose unnamed statement a setup Query dropped) and
// the statement is prepared afresh there, with the shape check's round
// trip (stale.go). checks/op is how many queries paid it.
func BenchmarkDescribeExecContended(b *testing.B) {
	s := startRouter(b, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 4}}, nil)
	const clients = 8
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = connect(b, s, "t2", pgx.QueryExecModeDescribeExec)
	}
	checks0 := counterValue(b, s, "pgtenant_router_shape_checks_total")
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, c := range conns {
		n := b.N / clients
		if i < b.N%clients {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				var v int
				if err := c.QueryRow(context.Background(), "SELECT shard FROM whoami WHERE shard = $1", 2).Scan(&v); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric((counterValue(b, s, "pgtenant_router_shape_checks_total")-checks0)/float64(b.N), "checks/op")
}
