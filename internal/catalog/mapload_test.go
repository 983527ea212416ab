package catalog

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// waitLocate waits until m locates tenant in shard (want >= 0) or reports it
// unknown (want == placement.NoShard): the map's directory is told of
// catalog changes by NOTIFY, asynchronously.
func waitLocate(t *testing.T, m *placement.Map, tenant string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		loc, err := m.Locate(tenant)
		switch {
		case want == placement.NoShard && errors.Is(err, placement.ErrUnknownTenant):
			return
		case want >= 0 && err == nil && loc.Shard.ID == want:
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Locate(%q) = shard %d, %v; want shard %d (-1: unknown)", tenant, loc.Shard.ID, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// follow runs Watch on c until the test ends and returns a channel of the
// maps it applies.
func follow(t *testing.T, c *Catalog, opts WatchOptions) chan *placement.Map {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	maps := make(chan *placement.Map, 100)
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, opts, func(_ context.Context, m *placement.Map) error {
			maps <- m
			return nil
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	})
	return maps
}

// waitLive waits until c's Watch listens (live) or has lost its connection.
func waitLive(t *testing.T, c *Catalog, live bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for (c.tenants().live.Load() > 0) != live {
		if time.Now().After(deadline) {
			t.Fatalf("watch live = %v after 20s", !live)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTenantDirectory: a map loaded from the catalog holds no tenant, and
// routes every tenant as the catalog has it while Watch follows changes:
// tenants added after a lookup said "unknown", removed ones, explicit
// placements, bulk adds, and changes made with plain SQL.
func TestTenantDirectory(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16)
	pin := (placement.ShardOf("pinned", 16) + 3) % 16
	if _, err := c.AddTenant(ctx, "pinned", &pin); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddTenant(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	maps := follow(t, c, WatchOptions{Poll: time.Hour})
	m := <-maps
	if len(m.Tenants) != 0 || m.Directory == nil {
		t.Fatalf("loaded map has %d tenants, directory %v; want none and a directory", len(m.Tenants), m.Directory)
	}
	waitLive(t, c, true)
	waitLocate(t, m, "pinned", pin)
	waitLocate(t, m, "acme", placement.ShardOf("acme", 16))

	// Unknown, then added: routed once the "unknown" answer expires.
	waitLocate(t, m, "late", placement.NoShard)
	if _, err := c.AddTenant(ctx, "late", nil); err != nil {
		t.Fatal(err)
	}
	waitLocate(t, m, "late", placement.ShardOf("late", 16))

	// Removed: refused.
	if err := c.RemoveTenant(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	waitLocate(t, m, "acme", placement.NoShard)

	// Many at once: every one routes (after its "unknown" answer expired).
	var ids []string
	for i := range 200 {
		ids = append(ids, fmt.Sprintf("bulk%d", i))
	}
	for _, id := range ids[:10] {
		waitLocate(t, m, id, placement.NoShard)
	}
	if n, err := c.AddTenants(ctx, ids); err != nil || n != len(ids) {
		t.Fatalf("AddTenants = %d, %v", n, err)
	}
	for _, id := range ids[:10] {
		waitLocate(t, m, id, placement.ShardOf(id, 16))
	}

	// An operator's SQL moving a tenant by hand.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.tenants SET shard = 5, explicit = true WHERE id = 'pinned'`); err != nil {
		t.Fatal(err)
	}
	waitLocate(t, m, "pinned", 5)
	if _, err := c.pool.Exec(ctx, `TRUNCATE pgtenant.tenants`); err != nil {
		t.Fatal(err)
	}
	waitLocate(t, m, "late", placement.NoShard)
	select {
	case m := <-maps:
		t.Fatalf("tenant changes made a new map (version %d)", m.Version)
	default:
	}
}

// TestTenantCacheBounded: lookups of many tenants keep at most the cache's
// capacity in memory.
func TestTenantCacheBounded(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	c.SetTenantCache(64)
	var ids []string
	for i := range 300 {
		ids = append(ids, fmt.Sprintf("t%d", i))
	}
	if _, err := c.AddTenants(ctx, ids); err != nil {
		t.Fatal(err)
	}
	maps := follow(t, c, WatchOptions{Poll: time.Hour})
	m := <-maps
	waitLive(t, c, true)
	for _, id := range append(ids, "nobody1", "nobody2") {
		if _, err := m.Locate(id); err != nil && !errors.Is(err, placement.ErrUnknownTenant) {
			t.Fatal(err)
		}
	}
	for _, id := range ids {
		if loc, err := m.Locate(id); err != nil || loc.Shard.ID != placement.ShardOf(id, 4) {
			t.Fatalf("Locate(%q) = %+v, %v", id, loc, err)
		}
	}
	if n := c.tenants().cache.Len(); n > 64 || n == 0 {
		t.Fatalf("cache holds %d entries, capacity 64", n)
	}
}

// TestFenceAckedWithoutReadingTenants: a router acknowledges a fence, and
// its lifting, while the tenants table cannot be read at all (locked by
// another transaction): applying a map change reads only what changed.
func TestFenceAckedWithoutReadingTenants(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	if _, err := c.AddTenants(ctx, []string{"a", "b", "c"}); err != nil {
		t.Fatal(err)
	}
	fctx, cancel := context.WithCancel(ctx)
	applied := make(chan *placement.Map, 100)
	done := make(chan error, 1)
	go func() {
		done <- c.Follow(fctx, "r1", "127.0.0.1:1", 50*time.Millisecond, func(_ context.Context, m *placement.Map) error {
			applied <- m
			return nil
		})
	}()
	defer func() { cancel(); <-done }()
	<-applied
	lock, err := c.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx)
	if _, err := lock.Exec(ctx, `LOCK TABLE pgtenant.tenants IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	f := RouterFencer{Catalog: c}
	for _, state := range []string{placement.StateFenced, placement.StateActive} {
		if _, err := c.SetShardState(ctx, 2, state); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
		err := f.Fence(wctx, 2)
		wcancel()
		if err != nil {
			t.Fatalf("shard 2 %s not acknowledged while tenants are locked: %v", state, err)
		}
	}
	var last *placement.Map
	for len(applied) > 0 {
		last = <-applied
	}
	if last == nil || last.Shards[2].State != placement.StateActive {
		t.Fatalf("last map applied: %+v", last)
	}
}

// TestLoadMapSince: a map change is read from the change log (only the
// shards it names), and the whole map is read when the log does not cover
// every version since the previous map.
func TestLoadMapSince(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	load := func(prev *placement.Map) *placement.Map {
		t.Helper()
		m, err := c.loadMapSince(ctx, c.pool, prev)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	prev := load(nil)
	if same := load(prev); same != prev {
		t.Fatal("an unchanged map was read again")
	}
	// Mark shard 3 in prev so we can see whether it is read again.
	prev.Shards[3].Schema = "marked"
	if _, err := c.SetShardState(ctx, 1, placement.StateFenced); err != nil {
		t.Fatal(err)
	}
	m := load(prev)
	if m.Shards[1].State != placement.StateFenced || m.Shards[3].Schema != "marked" || prev.Shards[1].State != placement.StateActive {
		t.Fatalf("incremental load: shard 1 %+v, shard 3 %+v, prev shard 1 %+v", m.Shards[1], m.Shards[3], prev.Shards[1])
	}
	// A node change rereads the nodes only.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.nodes SET dsn = dsn || ' application_name=x' WHERE name = 'a'`); err != nil {
		t.Fatal(err)
	}
	m2 := load(m)
	if m2.Shards[3].Schema != "marked" || m2.Nodes["a"].DSN == m.Nodes["a"].DSN {
		t.Fatalf("node change: shard 3 %+v, node a %q", m2.Shards[3], m2.Nodes["a"].DSN)
	}
	// The log pruned past m2: the whole map is read.
	if _, err := c.SetShardState(ctx, 0, placement.StateFenced); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.map_changes`); err != nil {
		t.Fatal(err)
	}
	m3 := load(m2)
	if m3.Shards[3].Schema != placement.SchemaName(3) || m3.Shards[0].State != placement.StateFenced {
		t.Fatalf("full reload: shard 3 %+v, shard 0 %+v", m3.Shards[3], m3.Shards[0])
	}
	// BumpMapVersion (rls enable) makes routers read everything.
	m3.Shards[3].Schema = "marked"
	if err := c.BumpMapVersion(ctx); err != nil {
		t.Fatal(err)
	}
	if m4 := load(m3); m4.Shards[3].Schema != placement.SchemaName(3) {
		t.Fatalf("after BumpMapVersion: shard 3 %+v", m4.Shards[3])
	}
}

// TestWatchCatchesUp: changes made while Watch was disconnected (its
// notifications lost) are caught up when it reconnects: a shard fenced
// meanwhile, a tenant removed that was cached as registered, and one added
// that was cached as unknown.
func TestWatchCatchesUp(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	if _, err := c.AddTenant(ctx, "gone", nil); err != nil {
		t.Fatal(err)
	}
	maps := follow(t, c, WatchOptions{Poll: time.Hour, Retry: 3 * time.Second})
	m := <-maps
	waitLive(t, c, true)
	waitLocate(t, m, "gone", placement.ShardOf("gone", 4))
	waitLocate(t, m, "newbie", placement.NoShard)

	var n int
	if err := c.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, WatchApplicationName).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminate the watch connection: %d, %v", n, err)
	}
	waitLive(t, c, false)
	// Missed: nobody listens now.
	if err := c.RemoveTenant(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddTenant(ctx, "newbie", nil); err != nil {
		t.Fatal(err)
	}
	v, err := c.SetShardState(ctx, 2, placement.StateFenced)
	if err != nil {
		t.Fatal(err)
	}
	waitLive(t, c, true)
	select {
	case m := <-maps:
		if m.Version != v || m.Shards[2].State != placement.StateFenced {
			t.Fatalf("map after reconnecting: version %d (want %d), shard 2 %+v", m.Version, v, m.Shards[2])
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no map after reconnecting")
	}
	for _, c := range []struct {
		tenant string
		shard  int
	}{{"gone", placement.NoShard}, {"newbie", placement.ShardOf("newbie", 4)}} {
		if _, ok := m.Directory.(*tenantDir).cache.Get(c.tenant); ok {
			t.Errorf("%s still cached after reconnecting", c.tenant)
		}
		waitLocate(t, m, c.tenant, c.shard)
	}
}

// TestTenantDirectoryKeepsKnownThroughReconnect: a tenant the router looked
// up before its Watch reconnected is still routed while the catalog does not
// answer (here: its tenants table locked, so every lookup times out), while
// a tenant it never looked up gets ErrDirectoryUnavailable. Before, the
// reconnect emptied the cache and a known tenant got 08006 in a catalog
// outage (e2e TestMoveCatalogUnreachable/fence failed on it).
func TestTenantDirectoryKeepsKnownThroughReconnect(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16)
	if _, err := c.AddTenants(ctx, []string{"kept", "never"}); err != nil {
		t.Fatal(err)
	}
	maps := follow(t, c, WatchOptions{Poll: time.Hour})
	m := <-maps
	waitLive(t, c, true)
	if loc, err := m.Locate("kept"); err != nil || loc.Shard.ID != placement.ShardOf("kept", 16) {
		t.Fatalf("Locate(kept) = %+v, %v", loc, err)
	}

	// The Watch loses its connection and listens again.
	var old int32
	if err := c.pool.QueryRow(ctx, `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`,
		WatchApplicationName).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, old); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database() AND pid <> $2`,
			WatchApplicationName, old).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 && c.tenants().live.Load() > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Watch did not listen again within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// The catalog stops answering lookups.
	tx, err := c.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `LOCK pgtenant.tenants IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if loc, err := m.Locate("kept"); err != nil || loc.Shard.ID != placement.ShardOf("kept", 16) {
		t.Fatalf("Locate(kept) while the catalog does not answer = %+v, %v; want its shard as last known", loc, err)
	}
	if _, err := m.Locate("never"); !errors.Is(err, placement.ErrDirectoryUnavailable) {
		t.Fatalf("Locate(never) while the catalog does not answer: %v; want ErrDirectoryUnavailable", err)
	}
}

// TestLoadMapImportOverlay: while an import serves shards from its legacy
// database, every map read lays the import overlay over the shards (the
// first read finds the import tables, later ones read the overlay in the
// map's own snapshot), and a cutover's flip (the shard's epoch and its
// import row in one transaction) is seen whole.
func TestLoadMapImportOverlay(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.imports (legacy_node, legacy_schema, state) VALUES ('a', 'legacy', 'streaming');
		INSERT INTO pgtenant.import_shards (shard, state) SELECT id, 'copied' FROM pgtenant.shards`); err != nil {
		t.Fatal(err)
	}
	load := func(prev *placement.Map) *placement.Map {
		t.Helper()
		m, err := c.loadMapSince(ctx, c.pool, prev)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	check := func(m *placement.Map, cutover map[int]bool) {
		t.Helper()
		for _, s := range m.Shards {
			if cutover[s.ID] {
				if s.Schema != placement.SchemaName(s.ID) || s.Epoch != 1 {
					t.Fatalf("shard %d cut over: %+v", s.ID, s)
				}
			} else if s.Node != "a" || s.Schema != "legacy" {
				t.Fatalf("shard %d not cut over: %+v", s.ID, s)
			}
		}
	}
	m := load(nil)
	check(m, nil)
	if !c.importTables.Load() || !c.importing.Load() {
		t.Fatalf("import tables %v, importing %v", c.importTables.Load(), c.importing.Load())
	}
	for _, shard := range []int{1, 2} {
		if _, err := c.pool.Exec(ctx, `WITH s AS (UPDATE pgtenant.shards SET epoch = epoch + 1 WHERE id = $1)
			UPDATE pgtenant.import_shards SET state = 'cutover' WHERE shard = $1`, shard); err != nil {
			t.Fatal(err)
		}
	}
	m = load(m)
	check(m, map[int]bool{1: true, 2: true})
	// Every shard cut over, then one rolled back (import rollback's flip:
	// the epoch and the import row in one transaction): a reload puts it on
	// the legacy database again (it stayed on its node before the fix: the
	// reload read only the changed shard row, without the overlay).
	for _, shard := range []int{0, 3} {
		if _, err := c.pool.Exec(ctx, `WITH s AS (UPDATE pgtenant.shards SET epoch = epoch + 1 WHERE id = $1)
			UPDATE pgtenant.import_shards SET state = 'cutover' WHERE shard = $1`, shard); err != nil {
			t.Fatal(err)
		}
	}
	m = load(m)
	check(m, map[int]bool{0: true, 1: true, 2: true, 3: true})
	if _, err := c.pool.Exec(ctx, `WITH s AS (UPDATE pgtenant.shards SET epoch = epoch + 1 WHERE id = 2)
		UPDATE pgtenant.import_shards SET state = 'copied' WHERE shard = 2`); err != nil {
		t.Fatal(err)
	}
	m = load(m)
	if s := m.Shards[2]; s.Node != "a" || s.Schema != "legacy" {
		t.Fatalf("shard 2 rolled back while every other shard is cut over: %+v; want it on the legacy database", s)
	}
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.imports SET state = 'finished'`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetShardState(ctx, 0, placement.StateActive); err != nil { // a new version
		t.Fatal(err)
	}
	m = load(m)
	if m.Shards[0].Node == "a" && m.Shards[0].Schema == "legacy" || c.importing.Load() {
		t.Fatalf("after the import finished: shard 0 %+v, importing %v", m.Shards[0], c.importing.Load())
	}
}

// TestLoadMapMoveTarget: a shard's running move names its target in the map
// (Shard.Target, what routers pre-warm), read in full and as a change when
// the mover touches the shard's row; a finished move names none.
func TestLoadMapMoveTarget(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	load := func(prev *placement.Map) *placement.Map {
		t.Helper()
		m, err := c.loadMapSince(ctx, c.pool, prev)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	prev := load(nil)
	src := prev.Shards[1].Node
	dst := "a"
	if src == "a" {
		dst = "b"
	}
	var id int64
	if err := c.pool.QueryRow(ctx, `INSERT INTO pgtenant.moves (shard, source_node, target_node, step) VALUES (1, $1, $2, 'catchup') RETURNING id`, src, dst).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if m := load(nil); m.Shards[1].Target != dst || m.Shards[0].Target != "" {
		t.Fatalf("full load during a move: shard 1 %+v, shard 0 %+v; want target %q on shard 1 only", m.Shards[1], m.Shards[0], dst)
	}
	// The mover's announcement (the row updated to itself) is a change.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.shards SET state = state WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	m := load(prev)
	if m.Shards[1].Target != dst {
		t.Fatalf("incremental load after the announcement: shard 1 %+v, want target %q", m.Shards[1], dst)
	}
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.moves SET status = 'done' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SetShardState(ctx, 1, placement.StateFenced); err != nil {
		t.Fatal(err)
	}
	if m2 := load(m); m2.Shards[1].Target != "" || m2.Shards[1].State != placement.StateFenced {
		t.Fatalf("after the move: shard 1 %+v, want no target", m2.Shards[1])
	}
}
