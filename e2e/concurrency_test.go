package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/router"
)

// TestConcurrentClients runs 200 pgx clients over pools of 20 backend
// connections per node. Every client runs transactions for random tenants
// and checks each answer came from that tenant's shard, node and setting.
func TestConcurrentClients(t *testing.T) {
	const clients, txns, poolSize = 200, 5, 20
	c := newCluster(t, router.Config{Pool: router.PoolConfig{MaxSize: poolSize, WaitTimeout: 30 * time.Second}, MaxClients: clients + 10})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- oneClient(ctx, c, i, modes[i%len(modes)], txns)
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if err != nil {
			n++
			if n <= 10 {
				t.Error(err)
			}
		}
	}
	if n > 0 {
		t.Fatalf("%d of %d clients failed", n, clients)
	}

	// The router never opened more than poolSize backends on a node.
	for name, dsn := range c.nodeDSN {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var backends int
		err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()").Scan(&backends)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if backends > poolSize {
			t.Errorf("node %s has %d backend connections, pool max is %d", name, backends, poolSize)
		}
	}
}

func oneClient(ctx context.Context, c *cluster, id int, mode pgx.QueryExecMode, txns int) error {
	cfg, err := pgx.ParseConfig(c.dsn(""))
	if err != nil {
		return err
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("client %d: connect: %w", id, err)
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewPCG(uint64(id), 42))
	for k := 0; k < txns; k++ {
		ti := rng.IntN(numTenants)
		tn := tenantName(ti)
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL pgtenant.tenant = '"+tn+"'"); err != nil {
				return err
			}
			var shard, n int
			var node, setting string
			err := tx.QueryRow(ctx, `SELECT s.shard, s.node, current_setting('pgtenant.tenant_id'),
				(SELECT count(*) FROM items i WHERE i.tenant = $1 AND i.shard = s.shard)
				FROM shard_info s`, tn).Scan(&shard, &node, &setting, &n)
			if err != nil {
				return err
			}
			if shard != shardOf(ti) || node != nodeOf(shardOf(ti)) || setting != tn || n != itemsPerTenant {
				return fmt.Errorf("tenant %s answered by shard %d node %s tenant_id %q with %d items; want shard %d node %s",
					tn, shard, node, setting, n, shardOf(ti), nodeOf(shardOf(ti)))
			}
			// A write, so that transactions hold their backend a while.
			_, err = tx.Exec(ctx, "UPDATE items SET qty = qty WHERE id = $1", ti*100+1+rng.IntN(itemsPerTenant))
			return err
		})
		if err != nil {
			return fmt.Errorf("client %d (mode %v) txn %d tenant %s: %w", id, mode, k, tn, err)
		}
		// One statement outside a transaction, tenant by comment hint.
		var shard int
		if err := conn.QueryRow(ctx, fmt.Sprintf("/* tenant: %s */ SELECT shard FROM shard_info", tn)).Scan(&shard); err != nil || shard != shardOf(ti) {
			return fmt.Errorf("client %d: hinted %s: shard %d, %v", id, tn, shard, err)
		}
	}
	return nil
}
