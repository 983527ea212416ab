package importer

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/stream"
)

// writeBacklog commits n single-row transactions on the legacy database
// (buildings of the tenants ids, in turn, city 'Backlog').
func writeBacklog(t *testing.T, ctx context.Context, legacy string, ids []string, n int) {
	t.Helper()
	conn, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TEMP TABLE backlog_ids AS SELECT unnest($1::text[]) AS id`, ids); err != nil {
		t.Fatal(err)
	}
	// A DO block commits each row by itself: n transactions for the stream.
	if _, err := conn.Exec(ctx, `DO $$ DECLARE t text[]; BEGIN SELECT array_agg(id) INTO t FROM backlog_ids;
		FOR i IN 1..`+strconv.Itoa(n)+` LOOP
			INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES (t[1 + i % array_length(t, 1)], 'backlog ' || i, 'Backlog', i);
			COMMIT;
		END LOOP; END $$`); err != nil {
		t.Fatal(err)
	}
}

// TestCutoverWaitsForRestartedStream (issue 12, the kill of import start
// while streaming): the stream was stopped while the app kept writing and
// started again; the cutover's markers travel behind that backlog, so the
// first ones arrive only once it is applied. The cutover waits for a
// stream that reads the slot (it used to give up after MarkerTimeout with
// "is import start running?", in TestImportKills 8 shards in a row), cuts
// the shard over, and every backlog row of its tenants is on its node.
func TestCutoverWaitsForRestartedStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCatalog(t, 8, 2)
	legacy, ids := newLegacy(t, srvA, c, 20, 2)
	im := New(c, nil)
	if _, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true}); err != nil {
		t.Fatal(err)
	}
	applyBaseline(t, c, im)
	t.Cleanup(func() { dropSlots(t, legacy) })
	if _, err := im.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	stop := follow(ctx, t, im)
	waitSlotActive(t, ctx, im)
	stop()
	const backlog = 30000
	writeBacklog(t, ctx, legacy, ids, backlog)
	stop = follow(ctx, t, im)
	defer stop()

	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	loc, err := m.Lookup(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	res, err := im.Cutover(ctx, CutoverOptions{Shards: []int{loc.Shard.ID}, MarkerTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("cutover after the restart: %v", err)
	}
	t.Logf("cut over %s after the restart with %d transactions behind: pause %s, stream lag before %s",
		time.Since(t0).Round(time.Millisecond), backlog, res[0].Pause.Round(time.Millisecond), res[0].Lag.Round(time.Millisecond))

	// Every backlog row of the shard's tenants is on its node, once.
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	var tenants []string
	for _, id := range ids {
		if l, _ := m.Locate(id); l.Shard.ID == loc.Shard.ID {
			tenants = append(tenants, id)
		}
	}
	var want int64
	if err := lc.QueryRow(ctx, `SELECT count(*) FROM buildings WHERE city = 'Backlog' AND tenant_id = ANY ($1)`, tenants).Scan(&want); err != nil {
		t.Fatal(err)
	}
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := shards[loc.Shard.ID]
	if node.Shard != loc.Shard.ID || node.State != ShardCutover {
		t.Fatalf("shard %d after its cutover: %+v", loc.Shard.ID, node)
	}
	nc, err := pgx.Connect(ctx, node.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close(ctx)
	var got, distinct int64
	if err := nc.QueryRow(ctx, `SELECT count(*), count(DISTINCT name) FROM `+pgx.Identifier{node.Schema, "buildings"}.Sanitize()+` WHERE city = 'Backlog'`).Scan(&got, &distinct); err != nil {
		t.Fatal(err)
	}
	if want == 0 || got != want || distinct != want {
		t.Fatalf("shard %d on %s: %d backlog rows (%d distinct), the legacy database %d", loc.Shard.ID, node.Node, got, distinct, want)
	}
}

// waitSlotActive waits until a stream reads the import's slot.
func waitSlotActive(t *testing.T, ctx context.Context, im *Importer) {
	t.Helper()
	for i := 0; ; i++ {
		st, err := im.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == StateStreaming && st.SlotActive {
			return
		}
		if i > 600 {
			t.Fatal("the stream never read the slot")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFollowWaitsForBusySlot: import start run again right after a kill
// can find the slot still held by the killed run's WAL sender (55006); it
// waits for it instead of exiting, then streams.
func TestFollowWaitsForBusySlot(t *testing.T) {
	ctx := ctxT(t)
	_, im, legacy, ids := startImport(t, ctx, 4, 1, 4)
	imp, err := im.load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Another reader holds the slot for 3s.
	hctx, release := context.WithCancel(ctx)
	held := make(chan error, 1)
	go func() {
		s := stream.New(stream.Config{DSN: legacy, Slot: imp.Slot, Publications: []string{imp.Publication},
			Applier: stream.ApplierFunc(func(context.Context, []*stream.Txn) error { return nil })})
		held <- s.Run(hctx)
	}()
	for i := 0; ; i++ {
		if st, err := im.Status(ctx); err != nil {
			t.Fatal(err)
		} else if st.SlotActive {
			break
		}
		if i > 600 {
			t.Fatal("the other reader never held the slot")
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.AfterFunc(3*time.Second, release)
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- im.Follow(fctx) }()
	defer func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("follow: %v", err)
		}
	}()
	<-held
	execSQL(t, legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'after the wait', 'Busy', 1)`, ids[0])
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("follow ended: %v", err)
		default:
		}
		var n int
		for _, s := range shards {
			nc, err := pgx.Connect(ctx, s.NodeDSN)
			if err != nil {
				t.Fatal(err)
			}
			var k int
			err = nc.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{s.Schema, "buildings"}.Sanitize()+` WHERE city = 'Busy'`).Scan(&k)
			nc.Close(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n += k
		}
		if n == 1 {
			return
		}
		if i > 300 {
			t.Fatalf("the row written after the slot was released is on the shards %d times", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestMarkerWaitsForDelayedChange (issue 12, the cutover's pause): a change
// committed on the legacy database just before the marker whose apply on
// the node is held by a lock (the node's rounds wait behind it, the
// marker's with them). The cutover's round trip to the node, sent with the
// marker, comes before that change is applied: the wait for the marker
// ends only once the change is on the node, and the position it returns
// (where the flip's durability is checked and the shard's reverse stream
// starts) is past the change's commit on the node (never the earlier
// flush's) and flushed.
func TestMarkerWaitsForDelayedChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := startFollowed(t, ctx, 10)
	legacy, ids, s := f.legacy, f.ids, f.shardOf(t, ctx, f.ids[0])

	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	insert := func(name string) {
		t.Helper()
		if _, err := lc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Delayed', 1)`, ids[0], name); err != nil {
			t.Fatal(err)
		}
	}
	insert("before")
	waitRows(t, ctx, s, "before", 1)

	nc, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close(ctx)

	// The node's apply of the shard's buildings waits for a lock.
	lock, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(ctx)
	if _, err := lock.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE `+pgx.Identifier{s.Schema, "buildings"}.Sanitize()+` IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	insert("delayed")

	// The marker, and the wait for it (with the flush sent at once).
	wc, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close(ctx)
	if _, err := wc.Exec(ctx, `LISTEN `+pgx.Identifier{markerChannel(s.Shard)}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	seq, _, err := markAndRead(ctx, lc, s.Shard, nil)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		at  stream.LSN
		err error
	}
	waited := make(chan result, 1)
	go func() {
		at, err := (&Importer{}).waitMarker(ctx, wc, s, seq, nil, nil, CutoverOptions{MarkerTimeout: 2 * time.Minute}, true)
		waited <- result{at, err}
	}()
	select {
	case r := <-waited:
		t.Fatalf("the wait for the marker ended while the change before it was held on the node: %v, %v", r.at, r.err)
	case <-time.After(time.Second):
	}
	// The node's WAL position before the change can be applied: its
	// commit ends past it.
	var held string
	if err := nc.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	r := <-waited
	if r.err != nil {
		t.Fatal(r.err)
	}
	if n := countRows(t, ctx, s, "delayed"); n != 1 {
		t.Fatalf("the marker was seen with %d rows of the change before it on the node", n)
	}
	var flushed string
	if err := nc.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&flushed); err != nil {
		t.Fatal(err)
	}
	if r.at <= lsn(t, held) || lsn(t, flushed) < r.at {
		t.Fatalf("the wait returned node position %s: the delayed change committed past %s, the node's WAL is flushed to %s", r.at, held, flushed)
	}
}

// followedImport is an import copied and followed (Importer.Follow) until
// the test ends.
type followedImport struct {
	im     *Importer
	legacy string
	ids    []string
	m      *placement.Map
	shards []ShardProgress // by shard id
}

// startFollowed imports a legacy database of n tenants (catalog of 8
// shards on 2 nodes), copies it, and follows its changes until the test
// ends.
func startFollowed(t *testing.T, ctx context.Context, n int) *followedImport {
	t.Helper()
	c, im, legacy, ids := startImport(t, ctx, 8, 2, n)
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(follow(context.WithoutCancel(ctx), t, im))
	waitSlotActive(t, ctx, im)
	return &followedImport{im: im, legacy: legacy, ids: ids, m: m, shards: shards}
}

// startImport imports a legacy database of n tenants (one hour of
// readings each) into a catalog of shards shards on nodes nodes: init,
// the baseline, the copy (Importer.Start); the slots are dropped when the
// test ends.
func startImport(t *testing.T, ctx context.Context, shards, nodes, n int) (*catalog.Catalog, *Importer, string, []string) {
	t.Helper()
	c := newCatalog(t, shards, nodes)
	legacy, ids := newLegacy(t, srvA, c, n, 1)
	im := New(c, nil)
	if _, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true}); err != nil {
		t.Fatal(err)
	}
	applyBaseline(t, c, im)
	t.Cleanup(func() { dropSlots(t, legacy) })
	if _, err := im.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	return c, im, legacy, ids
}

// shardOf returns tenant's shard.
func (f *followedImport) shardOf(t *testing.T, ctx context.Context, tenant string) ShardProgress {
	t.Helper()
	loc, err := f.m.Lookup(ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	return f.shards[loc.Shard.ID]
}

// TestCutoverRefusesWithoutReverseSlots: a cutover whose node has no free
// replication slot for a shard's reverse stream (import rollback's) is
// refused before anything changes, with 53400 and what to do; it used to
// cut the shard over anyway, with a warning in the log that it could not
// be rolled back. With --no-rollback the same cutover is not refused.
func TestCutoverRefusesWithoutReverseSlots(t *testing.T) {
	ctx := ctxT(t)
	_, im, _, _ := startImport(t, ctx, 4, 1, 4)
	stop := follow(ctx, t, im)
	defer stop()
	waitSlotActive(t, ctx, im)
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := shards[0]
	if s.State != ShardCopied {
		t.Fatalf("shard 0 before the cutover: %+v", s)
	}
	conn, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	// Every free slot of the node's server taken (physical slots: cheap).
	if _, err := conn.Exec(ctx, `SELECT pg_create_physical_replication_slot('pgtenant_test_fill_' || i)
		FROM generate_series(1, current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)) i`); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := conn.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'pgtenant_test_fill_%'`); err != nil {
			t.Error(err)
		}
		conn.Close(context.Background())
	}()
	_, err = im.Cutover(ctx, CutoverOptions{Shards: []int{s.Shard}, MarkerTimeout: 2 * time.Second})
	var coded interface{ SQLState() string }
	if !errors.As(err, &coded) || coded.SQLState() != "53400" || !strings.Contains(err.Error(), "node n1 has 0 free replication slot(s)") ||
		!strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), "--no-rollback") {
		t.Fatalf("cutover without a free slot: %v, want 53400 naming node n1", err)
	}
	after, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after[s.Shard].State != ShardCopied {
		t.Fatalf("shard %d after the refused cutover: %+v", s.Shard, after[s.Shard])
	}
	var fences int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'pgtenant_import_rev_%'`).Scan(&fences); err != nil {
		t.Fatal(err)
	}
	if fences != 0 {
		t.Fatalf("%d reverse slot(s) after the refused cutover", fences)
	}
}
