package move

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDropPublicationNeverFailsWriters drops a move's publication on the
// source again and again while the shard's writers go on there (an aborted or
// undone move cleans up while the source serves the shard). PostgreSQL builds
// a table's publication list on a writer's first DML after an invalidation; a
// DROP PUBLICATION committing in the middle of that made writers fail with
// XX000 "cache lookup failed for publication" (seen in CI). No writer may see
// an error.
func TestDropPublicationNeverFailsWriters(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 100)
	ctx := context.Background()
	src, err := pgx.Connect(ctx, e.srcDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close(ctx)
	if err := ensureMarker(ctx, src); err != nil {
		t.Fatal(err)
	}
	names, err := tables(ctx, src, testSchema)
	if err != nil {
		t.Fatal(err)
	}
	list := make([]string, 0, len(names))
	for _, n := range names {
		list = append(list, ident(testSchema, n))
	}

	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var writes int
	var errs []error
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, e.srcDSN)
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			defer conn.Close(ctx)
			for i := 0; wctx.Err() == nil; i++ {
				// One statement per transaction, and one a transaction that
				// touches two tables, as the app does.
				var err error
				if i%2 == 0 {
					_, err = conn.Exec(ctx, `INSERT INTO shard_0005.items (account_id, writer, n) VALUES (1, $1, $2)`, w+1, i)
				} else {
					_, err = conn.Exec(ctx, `BEGIN; UPDATE shard_0005.accounts SET name = name WHERE id = 1; INSERT INTO shard_0005.events (kind) VALUES ('w'); COMMIT`)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					writes++
				}
				mu.Unlock()
				if err != nil {
					_, _ = conn.Exec(ctx, `ROLLBACK`)
				}
			}
		}()
	}
	const rounds = 60
	for r := range rounds {
		mv := &moveRun{Info: Info{ID: int64(r + 1), Shard: testShard}, Schema: testSchema}
		pub := append(list[:len(list):len(list)], fmt.Sprintf(`%s WHERE (move_id = %d)`, ident(markerSchema, "marker"), mv.ID))
		if _, err := src.Exec(ctx, `CREATE PUBLICATION `+ident(repName(mv))+` FOR TABLE `+strings.Join(pub, ", ")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if err := dropSourceObjects(ctx, src, mv); err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
	}
	stop()
	wg.Wait()
	t.Logf("%d rounds of create/drop publication; %d writes, %d errors", rounds, writes, len(errs))
	for i, err := range errs {
		if i == 5 {
			break
		}
		t.Errorf("writer: %v", err)
	}
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_publication`); n != 0 {
		t.Errorf("%d publications left", n)
	}
}
