package importer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestVerifyConsistentUnderWrites: while writers change the legacy
// database without pause (inserts in a parent, its child and a child
// table without a tenant column, updates, deletes) and the stream applies
// them, import verify reads both sides at one point and finds no
// difference, every time; a row changed on a shard behind the stream's
// back is found, as the one difference, under the same writes.
func TestVerifyConsistentUnderWrites(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 8, 2)
	legacy, ids := newLegacy(t, srvA, c, 40, 3)
	im := New(c, nil)
	initImport(ctx, t, c, im, legacy)
	if _, err := im.Start(ctx, StartOptions{Parallel: 2}); err != nil {
		t.Fatal(err)
	}
	defer follow(ctx, t, im)()
	for {
		st, err := im.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == StateStreaming && st.SlotActive {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Writers on the legacy database, every tenant but the first.
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writes atomic.Int64
	werrs := make([]error, 3)
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(wctx, legacy)
			if err != nil {
				werrs[w] = err
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for i := 0; wctx.Err() == nil; i++ {
				id := ids[1+rng.IntN(len(ids)-1)]
				var err error
				switch i % 3 {
				case 0:
					_, err = conn.Exec(wctx, `WITH b AS (INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Graz', 7) RETURNING id),
						m AS (INSERT INTO meters (tenant_id, building_id, energy, unit) SELECT $1, id, 'heat', 'GJ' FROM b RETURNING id)
						INSERT INTO meter_notes (meter_id, note) SELECT id, $2 FROM m`, id, fmt.Sprintf("w%d %d", w, i))
				case 1:
					_, err = conn.Exec(wctx, `UPDATE customers SET name = $2 WHERE tenant_id = $1`, id, fmt.Sprintf("renamed w%d %d", w, i))
				case 2:
					_, err = conn.Exec(wctx, `DELETE FROM readings WHERE ctid = (SELECT ctid FROM readings WHERE tenant_id = $1 LIMIT 1)`, id)
				}
				if err != nil {
					if wctx.Err() == nil {
						werrs[w] = err
					}
					return
				}
				writes.Add(1)
			}
		}()
	}
	defer func() {
		stopWriters()
		wg.Wait()
		for i, err := range werrs {
			if err != nil {
				t.Errorf("writer %d: %v", i, err)
			}
		}
	}()

	for round := 0; round < 3; round++ {
		before := writes.Load()
		rep, err := im.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Consistent || rep.LSN == "" || rep.Shards != 8 || rep.Tenants != 40 || rep.Rows == 0 || !rep.OK() {
			t.Fatalf("verify round %d under writes: consistent %v at %s, %d shards, %d tenants, %d rows, mismatches %v",
				round, rep.Consistent, rep.LSN, rep.Shards, rep.Tenants, rep.Rows, rep.Mismatches)
		}
		if writes.Load() == before {
			t.Fatalf("verify round %d: no write happened while it ran", round)
		}
	}

	// A row changed on the shard, not on the legacy database.
	target := tenantShard(ctx, t, c, im, ids[0])
	execSQL(t, target.NodeDSN, `UPDATE `+pgx.Identifier{target.Schema, "buildings"}.Sanitize()+` SET floor_area_m2 = floor_area_m2 + 1
		WHERE id = (SELECT min(id) FROM `+pgx.Identifier{target.Schema, "buildings"}.Sanitize()+` WHERE tenant_id = $1)`, ids[0])
	rep, err := im.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Consistent || len(rep.Mismatches) != 1 {
		t.Fatalf("verify after tampering: consistent %v, mismatches %v", rep.Consistent, rep.Mismatches)
	}
	if mm := rep.Mismatches[0]; mm.Tenant != ids[0] || mm.Table != "buildings" || mm.Shard != target.Shard || mm.LegacyRows != mm.ShardRows || mm.LegacyChecksum == mm.ShardChecksum {
		t.Fatalf("verify after tampering: %v, want %s's buildings on shard %d, same count, another checksum", mm, ids[0], target.Shard)
	}
	t.Logf("%d writes on the legacy database during the verifies", writes.Load())
}
