package importer

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestLateWritesLoggedOnce: writes the stream sees on the legacy database
// for a shard already cut over (an import rollback writes all of the
// shard's changes back there before its flip) are skipped, counted and
// logged once, not once per row: a rollback of a busy shard flooded the log.
func TestLateWritesLoggedOnce(t *testing.T) {
	var buf bytes.Buffer
	a := &applier{
		log:     slog.New(slog.NewTextHandler(&buf, nil)),
		tenants: map[string]int{"acme": 3},
		shards:  map[int]shardRoute{3: {schema: "shard_0003", node: "n1", state: ShardCutover}},
		pos:     map[string]stream.LSN{},
		rels:    map[[2]any]*stream.Relation{},
	}
	rel := &stream.Relation{ID: 1, Schema: "public", Table: "buildings"}
	for i := 0; i < 1000; i++ {
		txn := &stream.Txn{EndLSN: stream.LSN(100 + i)}
		err := a.route(context.Background(), txn, stream.Change{Kind: stream.Insert, Rel: rel}, "acme", func(string, stream.Change) {
			t.Fatal("a write for a shard cut over was applied")
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, want := a.Skipped.Load(), int64(1000); got != want {
		t.Errorf("skipped %d, want %d", got, want)
	}
	if got := strings.Count(buf.String(), "level=WARN"); got != 1 {
		t.Errorf("%d warnings for 1,000 late writes of one shard, want 1:\n%.2000s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "shard=3") {
		t.Errorf("the warning does not name the shard: %s", buf.String())
	}
}
