package router

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// countingDir is a placement.Directory placing tenant tN in shard
// N % testShards (the offset shifts it), counting the questions it is asked.
type countingDir struct {
	asked  atomic.Int64
	offset int
}

func (d *countingDir) TenantShard(_ context.Context, tenant string) (int, error) {
	d.asked.Add(1)
	n, err := strconv.Atoi(strings.TrimPrefix(tenant, "t"))
	if err != nil || !strings.HasPrefix(tenant, "t") {
		return 0, fmt.Errorf("tenant %q: %w", tenant, placement.ErrUnknownTenant)
	}
	return (n + d.offset) % testShards, nil
}

// dirMap is testMap with its tenants asked of d instead of kept in the map.
func dirMap(d placement.Directory) *placement.Map {
	m := cloneMap(testMap())
	m.Tenants = map[string]int{}
	m.Directory = d
	return m
}

// TestSpeed16OneLookupPerLocalTenantTxn: a transaction that names its tenant
// with set_config(…, true) (or SET LOCAL) asks the directory once, not once
// for the set_config and again for the checkout (issue 15, speed16); a map
// published between the two is asked again, and the statement runs on the
// shard the new map gives.
func TestSpeed16OneLookupPerLocalTenantTxn(t *testing.T) {
	d := &countingDir{}
	s := startRouter(t, Config{}, dirMap(d))
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "", mode)
			defer c.Close(context.Background())
			for _, set := range []string{"SELECT set_config('pgtenant.tenant', 't3', true)", "SET LOCAL pgtenant.tenant = 't3'"} {
				tx, err := c.Begin(ctx(t))
				if err != nil {
					t.Fatal(err)
				}
				before := d.asked.Load()
				if _, err := tx.Exec(ctx(t), set); err != nil {
					t.Fatalf("%s: %v", set, err)
				}
				var shard int
				if err := tx.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&shard); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx(t)); err != nil {
					t.Fatal(err)
				}
				if got, want := d.asked.Load()-before, int64(1); got != want {
					t.Errorf("%s: directory asked %d times in the transaction, want %d", set, got, want)
				}
				if got, want := shard, 3; got != want {
					t.Errorf("%s: shard %d, want %d", set, got, want)
				}
			}
		})
	}
	t.Run("new map between", func(t *testing.T) {
		c := connect(t, s, "", pgx.QueryExecModeSimpleProtocol)
		defer c.Close(context.Background())
		tx, err := c.Begin(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		if _, err := tx.Exec(ctx(t), "SELECT set_config('pgtenant.tenant', 't3', true)"); err != nil {
			t.Fatal(err)
		}
		d2 := &countingDir{offset: 2} // t3 now in shard 5
		m2 := dirMap(d2)
		m2.Version = 2
		if err := s.SetMap(ctx(t), m2); err != nil {
			t.Fatal(err)
		}
		var shard int
		if err := tx.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&shard); err != nil {
			t.Fatal(err)
		}
		if got, want := shard, 5; got != want {
			t.Errorf("shard %d after a new map, want %d (the new map's)", got, want)
		}
		if got := d2.asked.Load(); got != 1 {
			t.Errorf("new map's directory asked %d times, want 1", got)
		}
	})
}
