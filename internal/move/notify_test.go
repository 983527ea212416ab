package move

import (
	"context"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// TestOneNotifyPerMapChange: every map change a move makes (fence, abort of
// the fence, flip, flip back) reaches the routers as one NOTIFY
// pgtenant_map, the one the shards table's trigger sends with the new map
// version. Routers (catalog.Watch) read the map once per notification: a
// second NOTIFY of the mover's own, with the shard id as payload, made every
// router read the map twice per change.
func TestOneNotifyPerMapChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cat := catalog.New(srvA.NewDatabase(t), slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	if err := cat.Init(ctx, 8); err != nil {
		t.Fatal(err)
	}
	p := cat.Pool()
	if _, err := p.Exec(ctx, `INSERT INTO pgtenant.nodes (name, dsn) VALUES ('n1', 'host=n1'), ('n2', 'host=n2')`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Exec(ctx, `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, 'n1')`, testShard, testSchema); err != nil {
		t.Fatal(err)
	}
	m := New(Config{Catalog: p, Fencer: &countingFencer{}, FenceLease: time.Minute, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	mv := &moveRun{Info: Info{Shard: testShard, Source: "n1", Target: "n2", Step: StepFence}}
	if err := p.QueryRow(ctx, `INSERT INTO pgtenant.moves (shard, source_node, target_node, step) VALUES ($1, 'n1', 'n2', 'fence') RETURNING id`, testShard).Scan(&mv.ID); err != nil {
		t.Fatal(err)
	}

	listen, err := pgx.Connect(ctx, cat.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(context.Background())
	if _, err := listen.Exec(ctx, "LISTEN "+pgx.Identifier{catalog.Channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	version := func() int64 {
		v, err := cat.MapVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	v0 := version()
	steps := []struct {
		name string
		run  func() error
	}{
		{"fence", func() error { return m.markFenced(ctx, mv) }},
		{"abort the fence", func() error { return m.markActive(ctx, mv) }},
		{"fence again", func() error { return m.markFenced(ctx, mv) }},
		{"flip", func() error { return m.flip(ctx, mv) }},
	}
	for _, st := range steps {
		if err := st.run(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	// The undo's flip back, from a fence on the target.
	back := &moveRun{Info: Info{ID: mv.ID, Shard: testShard, Source: "n1", Target: "n2"}}
	if _, err := p.Exec(ctx, `UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1`, testShard); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Exec(ctx, `INSERT INTO pgtenant.fence_leases (shard, move_id, expires_at) VALUES ($1, $2, now() + interval '1 minute')`, testShard, mv.ID); err != nil {
		t.Fatal(err)
	}
	if err := m.flipBack(ctx, back); err != nil {
		t.Fatalf("flip back: %v", err)
	}
	// A fence of the fence API, and its flip.
	f, err := m.FenceShard(ctx, testShard, "n1", -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Flip(ctx, nil); err != nil {
		t.Fatalf("fence API flip: %v", err)
	}
	const want = 8 // the steps, the test's own fence, the flip back, the fence API's fence and flip
	changes := version() - v0
	if changes != want {
		t.Fatalf("%d map versions for %d changes", changes, want)
	}
	// Notifications arrive in commit order: a last one marks the end.
	if _, err := p.Exec(ctx, `SELECT pg_notify($1, 'end')`, catalog.Channel); err != nil {
		t.Fatal(err)
	}
	var payloads []string
	for {
		n, err := listen.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("wait for notifications (after %q): %v", payloads, err)
		}
		if n.Payload == "end" {
			break
		}
		payloads = append(payloads, n.Payload)
	}
	var versions []string
	for v := v0 + 1; v <= v0+changes; v++ {
		versions = append(versions, strconv.FormatInt(v, 10))
	}
	if got := len(payloads); got != len(versions) {
		t.Fatalf("%d notifications on %s for %d map changes: %q, want one per change, %q", got, catalog.Channel, changes, payloads, versions)
	}
	for i := range versions {
		if payloads[i] != versions[i] {
			t.Errorf("notification %d: %q, want the map version %q", i, payloads[i], versions[i])
		}
	}
}
