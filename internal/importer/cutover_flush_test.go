package importer

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestFencedShardMarkerDurable (issue 12, the cutover's pause): once a
// shard is fenced, its node flushes what the stream applied of it (a round
// that changes a fenced shard commits with its flush; the node is flushed
// when the fence is first seen), so the notification of the shard's marker
// names a position where the node is already durable (no second position:
// the cutover flips without flushing the node itself). Both for a marker
// whose shard last changed before the fence and for one whose shard
// changed under it; each position is flushed on the node and past the
// shard's last change. (Before, a marker round that did not itself change
// its shard always named a position not known flushed, and the cutover
// flushed the node, in its pause.)
func TestFencedShardMarkerDurable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := startFollowed(t, ctx, 10)
	im, legacy, ids := f.im, f.legacy, f.ids
	s := f.shardOf(t, ctx, ids[0])
	other := "" // a tenant of another shard
	for _, id := range ids[1:] {
		if f.shardOf(t, ctx, id).Shard != s.Shard {
			other = id
			break
		}
	}
	if other == "" {
		t.Fatal("every tenant is on one shard")
	}

	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	insert := func(tenant, name string) {
		t.Helper()
		if _, err := lc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Fenced', 1)`, tenant, name); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close(ctx)
	if _, err := nc.Exec(ctx, `LISTEN `+pgx.Identifier{markerChannel(s.Shard)}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	position := func(fn string) stream.LSN {
		t.Helper()
		var at string
		if err := nc.QueryRow(ctx, `SELECT `+fn+`()::text`).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return lsn(t, at)
	}
	// marker commits a marker of the shard and returns the position its
	// notification names, failing when it names two (not known flushed).
	marker := func(what string) stream.LSN {
		t.Helper()
		seq, _, err := markAndRead(ctx, lc, s.Shard, nil)
		if err != nil {
			t.Fatal(err)
		}
		ok, payload, err := waitNotified(ctx, nc, seq, time.Minute)
		if err != nil || !ok {
			t.Fatalf("%s: no notification of the marker: %v", what, err)
		}
		if strings.Contains(payload, " ") {
			t.Fatalf("%s: the marker's notification names %q: the node is not known flushed past the shard's changes", what, payload)
		}
		at := lsn(t, payload)
		if flushed := position("pg_current_wal_flush_lsn"); at > flushed {
			t.Fatalf("%s: the marker's notification names %s, the node's WAL is flushed to %s", what, at, flushed)
		}
		return at
	}

	pre := position("pg_current_wal_insert_lsn") // before the change's commit on the node
	insert(ids[0], "before")
	waitRows(t, ctx, s, "before", 1)

	fence, err := im.mover(time.Minute).FenceShard(ctx, s.Shard, s.Node, importFenceOwner)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := fence.Release(ctx); err != nil {
			t.Error(err)
		}
	}()
	insert(other, "other") // a batch that reads the routes: the fence is seen
	if at := marker("a marker after the fence"); at <= pre {
		t.Fatalf("a marker after the fence names %s, not past the node's position %s before the shard's last change", at, pre)
	}

	before := position("pg_current_wal_insert_lsn")
	insert(ids[0], "under the fence")
	waitRows(t, ctx, s, "under the fence", 1)
	if at := marker("a marker after a change under the fence"); at <= before {
		t.Fatalf("a marker after a change under the fence names %s, not past the node's position %s before the change", at, before)
	}
}
