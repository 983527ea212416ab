package importer

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestNodeStallsAlone (issue 12, the cutover's marker): the stream applies
// each node's changes by itself, so a node that stalls (here: a lock held on
// one of its shard tables) holds back only its own changes. A shard of the
// other node cuts over meanwhile (its marker used to wait behind the stalled
// node's batch: the cutover gave up with ErrStreamBehind); the slot confirms
// nothing past the stalled node's first change not applied; the stream is
// killed during the stall and started again, and every change, on both
// nodes, is on its shard exactly once, including a transaction that wrote to
// both nodes (applied on one node before the kill, on the other after).
func TestNodeStallsAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c, im, legacy, ids := startImport(t, ctx, 8, 2, 20)
	imp, err := im.load(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// A tenant whose shard is on each node.
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tenant := map[string]string{}         // node → a tenant of it
	shardOf := map[string]ShardProgress{} // node → that tenant's shard
	for _, id := range ids {
		loc, err := m.Lookup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s := shards[loc.Shard.ID]
		if _, ok := tenant[s.Node]; !ok {
			tenant[s.Node], shardOf[s.Node] = id, s
		}
	}
	if len(tenant) != 2 {
		t.Fatalf("the tenants are on %d nodes, want 2", len(tenant))
	}
	a, b := shardOf["n1"], shardOf["n2"]
	ta, tb := tenant["n1"], tenant["n2"]

	stop := follow(ctx, t, im)
	waitSlotActive(t, ctx, im)

	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	insert := func(tenant, name string) {
		t.Helper()
		if _, err := lc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Stall', 1)`, tenant, name); err != nil {
			t.Fatal(err)
		}
	}
	insert(ta, "a before")
	insert(tb, "b before")
	waitRows(t, ctx, a, "a before", 1)
	waitRows(t, ctx, b, "b before", 1)

	// Node n2 stalls: a lock on its shard's buildings that inserts wait for.
	lock, err := pgx.Connect(ctx, b.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(ctx)
	if _, err := lock.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE `+pgx.Identifier{b.Schema, "buildings"}.Sanitize()+` IN SHARE MODE`); err != nil { // no xid: a slot created meanwhile need not wait for it
		t.Fatal(err)
	}
	var before string
	if err := lc.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	insert(tb, "b stalled")
	if _, err := lc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'a both', 'Stall', 1), ($2, 'b both', 'Stall', 1)`, ta, tb); err != nil {
		t.Fatal(err)
	}
	insert(ta, "a during")
	waitRows(t, ctx, a, "a both", 1)
	waitRows(t, ctx, a, "a during", 1)

	// n1's shard cuts over while n2 stalls.
	res, err := im.Cutover(ctx, CutoverOptions{Shards: []int{a.Shard}, MarkerTimeout: 10 * time.Second, CatchUpTimeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("cutover of shard %d on n1 while n2 stalls: %v", a.Shard, err)
	}
	t.Logf("shard %d cut over while n2 stalled: pause %s", a.Shard, res[0].Pause.Round(100*time.Microsecond))

	// The slot keeps what n2 has not applied (the stream reports every second).
	time.Sleep(2500 * time.Millisecond)
	var confirmed string
	if err := lc.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, imp.Slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if lsn(t, confirmed) > lsn(t, before) {
		t.Fatalf("the slot confirmed %s, past %s where n2's first change not applied began", confirmed, before)
	}
	if n := countRows(t, ctx, b, "b stalled"); n != 0 {
		t.Fatalf("a row written through a lock: %d", n)
	}

	// Kill the stream during the stall; release n2; start again.
	stop()
	if _, err := lock.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	waitAlone(t, ctx, lock)
	insert(tb, "b after")
	stop = follow(ctx, t, im)
	defer stop()
	for _, name := range []string{"b stalled", "b both", "b after"} {
		waitRows(t, ctx, b, name, 1)
	}
	// Exactly once on each node, with the rows n1 applied before the kill.
	for _, s := range []ShardProgress{a, b} {
		conn, err := pgx.Connect(ctx, s.NodeDSN)
		if err != nil {
			t.Fatal(err)
		}
		var n, distinct int
		err = conn.QueryRow(ctx, `SELECT count(*), count(DISTINCT name) FROM `+pgx.Identifier{s.Schema, "buildings"}.Sanitize()+` WHERE city = 'Stall'`).Scan(&n, &distinct)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := 4 // a before, a both, a during; b before, b stalled, b both, b after
		if s.Node == "n1" {
			want = 3
		}
		if n != want || distinct != want {
			t.Errorf("shard %d on %s: %d rows (%d distinct), want %d once each", s.Shard, s.Node, n, distinct, want)
		}
	}

	// Once every node applied and flushed, the slot confirms it all.
	var end string
	if err := lc.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&end); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if err := lc.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, imp.Slot).Scan(&confirmed); err != nil {
			t.Fatal(err)
		}
		if lsn(t, confirmed) >= lsn(t, end) {
			break
		}
		if i > 300 {
			t.Fatalf("the slot confirms %s, never %s: the stream does not learn what is durable", confirmed, end)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func lsn(t *testing.T, s string) stream.LSN {
	t.Helper()
	l, err := stream.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// countRows counts the buildings named name on s's shard.
func countRows(t *testing.T, ctx context.Context, s ShardProgress, name string) int {
	t.Helper()
	conn, err := pgx.Connect(ctx, s.NodeDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{s.Schema, "buildings"}.Sanitize()+` WHERE name = $1`, name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitRows waits until the building named name is on s's shard n times.
func waitRows(t *testing.T, ctx context.Context, s ShardProgress, name string, n int) {
	t.Helper()
	for i := 0; ; i++ {
		got := countRows(t, ctx, s, name)
		if got == n {
			return
		}
		if i > 300 {
			t.Fatalf("%q is on shard %d (%s) %d times, want %d", name, s.Shard, s.Node, got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitAlone waits until conn is the only session of its database: the
// killed stream's session, blocked by the lock, has ended.
func waitAlone(t *testing.T, ctx context.Context, conn *pgx.Conn) {
	t.Helper()
	for i := 0; ; i++ {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if i > 300 {
			t.Fatalf("%d other sessions on the stalled node after the stream was killed", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPipelineDurable: the position the stream confirms passes a batch only
// once each of its node parts, and every earlier batch's, is durable: a
// part committed without its flush counts once the node's flushed position
// passes its commit.
func TestPipelineDurable(t *testing.T) {
	p := newPipeline(map[string]*stream.TableApplier{"n1": nil, "n2": nil}, nil)
	n1, n2 := p.nodes["n1"], p.nodes["n2"]
	b1 := p.take(100, 2) // parts on n1 and n2
	b2 := p.take(200, 1) // n1 only
	b3 := p.take(300, 0) // nothing routed
	b4 := p.take(400, 1) // n2 only
	check := func(step string, want stream.LSN) {
		t.Helper()
		if got := p.Durable(); got != want {
			t.Fatalf("%s: durable %s, want %s", step, got, want)
		}
	}
	check("nothing applied", 0)
	// n1 commits b1's and b2's parts without the flush (node WAL at 10, 20).
	n1.unflushed = append(n1.unflushed, unflushedRound{lsn: 10, batches: []*pending{b1}}, unflushedRound{lsn: 20, batches: []*pending{b2}})
	n1.flushedTo(5)
	check("n1 not flushed", 0)
	n1.flushedTo(15)
	check("n1 flushed b1, n2 not applied", 0)
	// n2 applies b1's part and b4's with the flush (a marker).
	n2.p.done([]*pending{b1, b4})
	check("b2 not flushed on n1", 100)
	n1.flushedTo(20)
	check("all flushed", 400)
	_ = b3
}
