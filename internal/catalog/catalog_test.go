package catalog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

var nodeA, nodeB, replicaOnly *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.MainWith(m, []pgtest.Spec{{Name: "a"}, {Name: "b"}, {Name: "walreplica", Settings: map[string]string{"wal_level": "replica"}}},
		func(s []*pgtest.Server) { nodeA, nodeB, replicaOnly = s[0], s[1], s[2] })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newCatalog opens a fresh catalog database with n shards over two fresh node
// databases (nodes "a" and "b"), shards created.
func newCatalog(t *testing.T, shards int) *Catalog {
	t.Helper()
	ctx := ctxT(t)
	c := New(nodeA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Init(ctx, shards); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddNode(ctx, "a", nodeA.NewDatabase(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddNode(ctx, "b", nodeB.NewDatabase(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestInitAndUpgrade(t *testing.T) {
	ctx := ctxT(t)
	c := New(nodeA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if _, err := c.ShardCount(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("ShardCount before init: %v, want ErrNotInitialized", err)
	}
	for _, bad := range []int{0, 3, 100, 65537, 131072, -2} {
		if err := c.Init(ctx, bad); !errors.Is(err, ErrBadShardCount) {
			t.Errorf("Init(%d) = %v, want ErrBadShardCount", bad, err)
		}
	}
	// A catalog written by version 1 of the schema, with data in it.
	if err := c.upgradeTo(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Version(ctx); v != 1 {
		t.Fatalf("version = %d, want 1", v)
	}
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.meta VALUES ('shard_count', '16')`); err != nil {
		t.Fatal(err)
	}
	// (as that version registered it: no identity column yet)
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.nodes (name, dsn) VALUES ('a', $1)`, nodeA.NewDatabase(t)); err != nil {
		t.Fatal(err)
	}
	// Init upgrades in place and keeps what was there.
	if err := c.Init(ctx, 16); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Version(ctx); v != LatestVersion() {
		t.Fatalf("version after upgrade = %d, want %d", v, LatestVersion())
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "a" {
		t.Fatalf("nodes after upgrade = %v, %v", nodes, err)
	}
	if _, err := c.pool.Exec(ctx, `SELECT count(*) FROM pgtenant.moves`); err != nil {
		t.Fatalf("moves table after upgrade: %v", err)
	}
	// The node's identity is recorded at its first check.
	if r := c.CheckRegisteredNode(ctx, nodes[0]); r.Failed() {
		t.Fatalf("check node a after upgrade: %v", r.Err())
	}
	var identity *string
	if err := c.pool.QueryRow(ctx, `SELECT identity FROM pgtenant.nodes WHERE name = 'a'`).Scan(&identity); err != nil || identity == nil {
		t.Fatalf("identity of node a after its check: %v %v", identity, err)
	}
	// Running it again is a no-op; another count is refused.
	if err := c.Init(ctx, 16); err != nil {
		t.Fatalf("second Init: %v", err)
	}
	if err := c.Init(ctx, 32); err == nil || !strings.Contains(err.Error(), "already has 16 shards") {
		t.Fatalf("Init with another count = %v", err)
	}
	// A catalog from the future is refused.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.meta SET value = '999' WHERE key = 'schema_version'`); err != nil {
		t.Fatal(err)
	}
	if err := c.Upgrade(ctx); !errors.Is(err, ErrTooNew) {
		t.Fatalf("Upgrade of a newer catalog = %v, want ErrTooNew", err)
	}
}

func TestNodeAddErrors(t *testing.T) {
	ctx := ctxT(t)
	c := New(nodeA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Init(ctx, 4); err != nil {
		t.Fatal(err)
	}
	freePort, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, node, dsn, want string
	}{
		{"bad dsn", "x", "postgres://user:secret@host:notaport/db", "connection string"},
		{"unreachable", "x", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?connect_timeout=2", freePort), "reachable"},
		{"missing database", "x", nodeA.Cluster.DSN("no_such_db"), "reachable"},
		{"bad name", "bad name;", nodeA.Cluster.DSN("postgres"), "node name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.AddNode(ctx, tc.node, tc.dsn)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("AddNode = %v, want error mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error leaks the password: %v", err)
			}
		})
	}
	// wal_level=replica: accepted with a warning naming wal_level.
	report, err := c.AddNode(ctx, "replica", replicaOnly.NewDatabase(t))
	if err != nil {
		t.Fatalf("AddNode on wal_level=replica: %v", err)
	}
	var warned bool
	for _, ch := range report.Checks {
		if ch.Name == "wal_level" && ch.Status == CheckWarn {
			warned = true
		}
	}
	if !warned {
		t.Fatalf("no wal_level warning in %+v", report.Checks)
	}
	if _, err := c.AddNode(ctx, "replica", replicaOnly.NewDatabase(t)); err == nil || !strings.Contains(err.Error(), "already registered") {
		t.Fatalf("duplicate AddNode = %v", err)
	}
	// A name already taken is refused first, with 42710 and what to do:
	// no check ran, so nothing was created on the node (the move checks
	// create a replication slot) and an unreachable DSN is not tried.
	dsnA := nodeA.NewDatabase(t)
	for _, dsn := range []string{dsnA, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?connect_timeout=2", freePort)} {
		report, err := c.AddNode(ctx, "replica", dsn)
		if err == nil || !strings.Contains(err.Error(), `node "replica" is already registered (SQLSTATE 42710); choose another name`) || !strings.Contains(err.Error(), "pgtenant node list") {
			t.Errorf("AddNode of a taken name at %s = %v, want 42710 and a hint", RedactDSN(dsn), err)
		}
		if len(report.Checks) != 0 {
			t.Errorf("AddNode of a taken name ran checks first: %+v", report.Checks)
		}
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes = %v, %v; want only the good one", nodes, err)
	}
}

func TestVersionCheck(t *testing.T) {
	for _, tc := range []struct {
		num    int
		status string
	}{{130012, CheckFail}, {140000, CheckOK}, {150018, CheckOK}, {170002, CheckOK}, {90624, CheckFail}} {
		if got := versionCheck(tc.num, "x").Status; got != tc.status {
			t.Errorf("versionCheck(%d) = %s, want %s", tc.num, got, tc.status)
		}
	}
	if r := CheckNode(ctxT(t), "a", nodeA.Cluster.DSN("postgres")); r.Failed() || r.Version != 15 {
		t.Fatalf("CheckNode on a PG15 node: %+v", r)
	}
}

func TestEvenSpreadAndLaterNode(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 256)
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Shards != 128 {
			t.Errorf("node %s holds %d shards, want 128", n.Name, n.Shards)
		}
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			t.Fatal(err)
		}
		var schemas int
		conn.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'shard\_%'`).Scan(&schemas)
		conn.Close(ctx)
		if schemas != 128 {
			t.Errorf("node %s has %d shard schemas, want 128", n.Name, schemas)
		}
	}
	// Creating again creates nothing; a node added later gets no shard.
	if created, err := c.CreateShards(ctx); err != nil || len(created) != 0 {
		t.Fatalf("second CreateShards = %d, %v", len(created), err)
	}
	if _, err := c.AddNode(ctx, "c", nodeB.NewDatabase(t)); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Node(ctx, "c"); err != nil || n.Shards != 0 {
		t.Fatalf("late node = %+v, %v; want 0 shards", n, err)
	}
	// Removing a node that holds shards is refused; an empty one goes.
	if err := c.RemoveNode(ctx, "a"); !errors.Is(err, ErrNodeInUse) {
		t.Fatalf("RemoveNode(a) = %v, want ErrNodeInUse", err)
	}
	if err := c.RemoveNode(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveNode(ctx, "c"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("RemoveNode twice = %v, want ErrUnknownNode", err)
	}
	ops, err := c.Operations(ctx, 100)
	if err != nil || len(ops) < 5 {
		t.Fatalf("operations = %d, %v", len(ops), err)
	}
}

func TestTenantPlacement(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16)
	ids := []string{"acme", "O'Reilly", `semi;colon "quoted"`, "Ünïcødé 東京 🚀", " ", "0", strings.Repeat("x", 255), "DROP TABLE pgtenant.tenants; --"}
	for _, id := range ids {
		loc, err := c.AddTenant(ctx, id, nil)
		if err != nil {
			t.Fatalf("AddTenant(%q): %v", id, err)
		}
		if got, want := loc.Shard.ID, placement.ShardOf(id, 16); got != want {
			t.Errorf("tenant %q on shard %d, Go hash says %d", id, got, want)
		}
		if loc.Shard.Schema != placement.SchemaName(loc.Shard.ID) || loc.Node.DSN == "" {
			t.Errorf("tenant %q location %+v", id, loc)
		}
		again, err := c.Locate(ctx, id)
		if err != nil || again.Shard.ID != loc.Shard.ID || again.Node.Name != loc.Node.Name {
			t.Errorf("Locate(%q) = %+v, %v; want %+v", id, again, err, loc)
		}
	}
	if _, err := c.AddTenant(ctx, "acme", nil); !errors.Is(err, ErrTenantExists) {
		t.Fatalf("duplicate tenant: %v", err)
	}
	for _, bad := range []string{"", strings.Repeat("y", 256), "nul\x00byte", "\xff\xfe"} {
		if _, err := c.AddTenant(ctx, bad, nil); err == nil {
			t.Errorf("AddTenant(%q) accepted", bad)
		}
	}
	// Explicit placement overrides the hash.
	hashShard := placement.ShardOf("pinned", 16)
	pin := (hashShard + 5) % 16
	loc, err := c.AddTenant(ctx, "pinned", &pin)
	if err != nil || loc.Shard.ID != pin {
		t.Fatalf("explicit placement = %+v, %v; want shard %d", loc, err, pin)
	}
	bad := 16
	if _, err := c.AddTenant(ctx, "nowhere", &bad); err == nil {
		t.Fatal("placement on shard 16 of 16 accepted")
	}
	if _, err := c.Locate(ctx, "nobody"); !errors.Is(err, placement.ErrUnknownTenant) {
		t.Fatalf("Locate(nobody) = %v, want ErrUnknownTenant", err)
	}
	list, err := c.Tenants(ctx, -1, 0)
	if err != nil || len(list) != len(ids)+1 {
		t.Fatalf("Tenants = %d, %v; want %d", len(list), err, len(ids)+1)
	}
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range append(ids, "pinned") {
		want, _ := c.Locate(ctx, id)
		got, err := m.Locate(id)
		if err != nil || got.Shard.ID != want.Shard.ID || got.Node.DSN != want.Node.DSN {
			t.Errorf("map Locate(%q) = %+v, %v", id, got, err)
		}
	}
	if err := c.RemoveTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveTenant(ctx, "acme"); !errors.Is(err, placement.ErrUnknownTenant) {
		t.Fatalf("RemoveTenant twice = %v", err)
	}
	n, err := c.AddTenants(ctx, []string{"bulk1", "bulk2", "pinned"})
	if err != nil || n != 2 {
		t.Fatalf("AddTenants = %d, %v; want 2 added", n, err)
	}
	if loc, _ := c.Locate(ctx, "bulk2"); loc.Shard.ID != placement.ShardOf("bulk2", 16) {
		t.Fatalf("bulk tenant on shard %d, want %d", loc.Shard.ID, placement.ShardOf("bulk2", 16))
	}
}

func TestShardStats(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	loc, err := c.AddTenant(ctx, "acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, loc.Node.DSN)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE %s.readings AS SELECT g AS id, repeat('x', 100) AS v FROM generate_series(1, 5000) g`,
		pgx.Identifier{loc.Shard.Schema}.Sanitize()))
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := c.ShardStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != 4 {
		t.Fatalf("%d shards, want 4", len(stats))
	}
	for _, s := range stats {
		if s.ID == loc.Shard.ID {
			if s.Tenants != 1 || s.Bytes < 5000*100 {
				t.Errorf("tenant's shard %+v: want 1 tenant and >= 500000 bytes", s)
			}
		} else if s.Tenants != 0 || s.Bytes != 0 {
			t.Errorf("empty shard %+v", s)
		}
	}
}

func TestWatchFollowsChanges(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := newCatalog(t, 4)
	maps := make(chan *placement.Map, 10)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, WatchOptions{Poll: time.Hour}, func(_ context.Context, m *placement.Map) error {
			maps <- m
			return nil
		})
	}()
	first := <-maps
	if _, err := first.Locate("late"); !errors.Is(err, placement.ErrUnknownTenant) {
		t.Fatalf("first map knows a tenant not added yet: %v", err)
	}
	// A tenant added is not a map change (no version, no reload): the map
	// in use looks it up in the catalog.
	if _, err := c.AddTenant(ctx, "late", nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.MapVersion(ctx); v != first.Version {
		t.Fatalf("tenant add bumped the map version from %d to %d", first.Version, v)
	}
	waitLocate(t, first, "late", placement.ShardOf("late", 4))
	v, err := c.SetShardState(ctx, 1, placement.StateFenced)
	if err != nil {
		t.Fatal(err)
	}
	m := <-maps
	if m.Version != v || m.Shards[1].State != placement.StateFenced {
		t.Fatalf("fenced map: version %d want %d, state %q", m.Version, v, m.Shards[1].State)
	}
	// Changes made with plain SQL (as the mover or an operator makes them)
	// bump the version and notify too; an update of no row does not.
	before, _ := c.MapVersion(ctx)
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.shards SET state = 'active' WHERE id = 999`); err != nil {
		t.Fatal(err)
	}
	if after, _ := c.MapVersion(ctx); after != before {
		t.Fatalf("an update of no row bumped the map version from %d to %d", before, after)
	}
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.shards SET state = 'active' WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-maps:
		if m.Version <= v || m.Shards[1].State != placement.StateActive {
			t.Fatalf("map after a plain UPDATE: version %d (fenced at %d), state %q", m.Version, v, m.Shards[1].State)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no map after a plain UPDATE of pgtenant.shards")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Watch returned %v", err)
	}
}

func TestRouterAcks(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 2)
	if err := c.Heartbeat(ctx, "r1", "127.0.0.1:1", 3); err != nil {
		t.Fatal(err)
	}
	if err := c.Heartbeat(ctx, "r2", "127.0.0.1:2", 5); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := c.WaitAcked(short, 5, time.Minute, 10*time.Millisecond); err == nil {
		t.Fatal("WaitAcked returned while r1 is behind")
	}
	if err := c.Heartbeat(ctx, "r1", "127.0.0.1:1", 5); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAcked(ctx, 5, time.Minute, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// An acknowledgement is announced: a waiter that would not read the
	// routers again for an hour returns when it comes.
	waited := make(chan error, 1)
	go func() { waited <- c.WaitAcked(ctx, 7, time.Minute, time.Hour) }()
	if err := c.Heartbeat(ctx, "r1", "127.0.0.1:1", 7); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		t.Fatalf("WaitAcked returned while r2 is behind: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	if err := c.Heartbeat(ctx, "r2", "127.0.0.1:2", 8); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
}

// TestRouterAckAnnouncements: WaitAcked reads once which routers are
// behind, then takes each router's announcement on AckChannel ("version id",
// as Heartbeat sends it) as its acknowledgement without reading the routers
// again; an announcement without an id (an older router) makes it read them
// again. The announcements here are sent by hand, without the rows they
// would come with, to tell the two apart.
func TestRouterAckAnnouncements(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 2)
	for _, id := range []string{"r1", "r2"} {
		if err := c.Heartbeat(ctx, id, "127.0.0.1:1", 3); err != nil {
			t.Fatal(err)
		}
	}
	notify := func(payload string) {
		t.Helper()
		if _, err := c.Pool().Exec(ctx, `SELECT pg_notify($1, $2)`, AckChannel, payload); err != nil {
			t.Fatal(err)
		}
	}
	// until announces with each call of announce (the waiter may subscribe
	// after the first) until WaitAcked returns or 10s pass.
	until := func(v int64, announce func()) error {
		waited := make(chan error, 1)
		go func() { waited <- c.WaitAcked(ctx, v, time.Minute, time.Hour) }()
		deadline := time.After(10 * time.Second)
		for {
			announce()
			select {
			case err := <-waited:
				return err
			case <-deadline:
				return errors.New("WaitAcked did not return")
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	if err := until(5, func() { notify("5 r1"); notify("6 r2") }); err != nil {
		t.Fatalf("both routers announced version 5 or newer: %v", err)
	}
	// r2 announces an older version, then the plain form: the waiter reads
	// the routers again, where both still say 3.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	waited := make(chan error, 1)
	go func() { waited <- c.WaitAcked(short, 7, time.Minute, time.Hour) }()
	for i := 0; i < 5; i++ {
		notify("7 r1")
		notify("6 r2")
		notify("7")
		time.Sleep(50 * time.Millisecond)
	}
	if err := <-waited; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAcked with r2 behind and the routers' rows at version 3: %v", err)
	}
	// A router of an older pgtenant: its row, then the plain announcement.
	if _, err := c.Pool().Exec(ctx, `UPDATE pgtenant.routers SET acked_version = 8`); err != nil {
		t.Fatal(err)
	}
	if err := until(8, func() { notify("8") }); err != nil {
		t.Fatalf("plain announcement with the rows at version 8: %v", err)
	}
}

// TestRouterFencerPrepare: RouterFencer.Prepare opens the connection that
// listens for the routers' acknowledgements, before any wait (so that the
// first fence's pause does not open it).
func TestRouterFencerPrepare(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 2)
	listening := func() int64 {
		t.Helper()
		var n int64
		if err := c.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`,
			AckApplicationName).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := listening(); n != 0 {
		t.Fatalf("%d listening connections before Prepare", n)
	}
	if err := (RouterFencer{Catalog: c}).Prepare(ctx); err != nil {
		t.Fatal(err)
	}
	if n := listening(); n != 1 {
		t.Fatalf("%d listening connections after Prepare, want 1", n)
	}
	if err := (RouterFencer{Catalog: c}).Prepare(ctx); err != nil || listening() != 1 {
		t.Fatalf("a second Prepare: %v, %d listening connections", err, listening())
	}
}

func TestUsers(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 2)
	v0, _ := c.MapVersion(ctx)
	u := User{Name: "app", SCRAM: "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy", MD5: "md5" + strings.Repeat("a", 32), Shard: -1} // -1: no tenant
	if err := c.SetUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	if v1, _ := c.MapVersion(ctx); v1 <= v0 {
		t.Fatalf("adding a user did not bump the map version (%d then %d)", v0, v1)
	}
	u.MD5 = "md5" + strings.Repeat("b", 32)
	if err := c.SetUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	users, err := c.Users(ctx)
	if err != nil || len(users) != 1 || users[0] != u {
		t.Fatalf("Users = %+v, %v; want [%+v]", users, err, u)
	}
	if err := c.SetUser(ctx, User{Name: "bad", SCRAM: "plaintext", MD5: u.MD5}); err == nil {
		t.Fatal("a plaintext password was stored as a SCRAM verifier")
	}
	if err := c.RemoveUser(ctx, "app"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveUser(ctx, "app"); !errors.Is(err, ErrUnknownUser) {
		t.Fatalf("RemoveUser twice = %v", err)
	}
}

// node add against a catalog never initialised fails on the catalog first,
// before the node's checks connect to it (which create and drop a
// replication slot there): the node's DSN here answers nothing, so an
// error other than ErrNotInitialized means the checks ran first.
func TestNodeAddUninitializedCatalog(t *testing.T) {
	ctx := ctxT(t)
	c := New(nodeA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	freePort, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.AddNode(ctx, "n1", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?connect_timeout=5", freePort))
	if !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("AddNode on an uninitialised catalog: %v, want ErrNotInitialized", err)
	}
	for _, want := range []string{"SQLSTATE 55000", "pgtenant init"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}
