package nodestats

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// flush makes conn's backend write its pending statistics now (PostgreSQL
// 15 flushes them at most once a second otherwise).
func flush(t testing.TB, conn *pgx.Conn) {
	t.Helper()
	exec(t, conn, "SELECT pg_stat_force_next_flush()")
}

// A table larger than shared_buffers read by sequential scans misses nearly
// every block; a one-page table read over and over hits. Collect's numbers
// equal pg_statio_user_tables/indexes read right after it, lie between
// pg_stat_database read before and after it, and the rate falls in the range
// the pattern allows.
func TestCacheHitRatesKnownMissPattern(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	// Each step's counters are flushed before the next (a backend
	// otherwise sends them up to a second later, after the reset).
	exec(t, admin,
		`CREATE TABLE big (id int, pad text) WITH (autovacuum_enabled = off)`,
		`INSERT INTO big SELECT g, repeat('x', 500) FROM generate_series(1, 15000) g`,
		`VACUUM ANALYZE big`,
		`CREATE TABLE small (id int PRIMARY KEY, v text)`,
		`INSERT INTO small SELECT g, 'v' FROM generate_series(1, 10) g`,
		`VACUUM ANALYZE small`,
		`SELECT * FROM small`, // warm: its one page stays in shared buffers
	)
	var pages int64
	if err := admin.QueryRow(context.Background(), `SELECT relpages FROM pg_class WHERE relname = 'big'`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if pages < 4*sharedBuffers {
		t.Fatalf("big has %d pages; the pattern needs far more than shared_buffers (%d)", pages, sharedBuffers)
	}
	flush(t, admin)
	before := time.Now()
	exec(t, admin, `SELECT pg_stat_reset()`)

	reader := connect(t, dsn)
	const scans, smallReads, lookups = 3, 300, 200
	for i := 0; i < scans; i++ {
		exec(t, reader, `SELECT count(*) FROM big`)
	}
	for i := 0; i < smallReads; i++ {
		exec(t, reader, `SELECT * FROM small`)
	}
	exec(t, reader, `SET enable_seqscan = off`, `SET enable_bitmapscan = off`)
	for i := 0; i < lookups; i++ {
		if _, err := reader.Exec(context.Background(), `SELECT v FROM small WHERE id = $1`, i%10+1); err != nil {
			t.Fatal(err)
		}
	}
	flush(t, reader)

	db := func() (hit, read int64) {
		t.Helper()
		if err := admin.QueryRow(context.Background(), `SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()`).Scan(&hit, &read); err != nil {
			t.Fatal(err)
		}
		return hit, read
	}
	dbHit0, dbRead0 := db()
	flush(t, admin)
	s := collect(t, connect(t, asRole(t, dsn, healthRole)))
	var heapHit, heapRead, idxHit, idxRead int64
	if err := admin.QueryRow(context.Background(), `SELECT
		(SELECT sum(heap_blks_hit)::int8 FROM pg_statio_user_tables), (SELECT sum(heap_blks_read)::int8 FROM pg_statio_user_tables),
		(SELECT sum(idx_blks_hit)::int8 FROM pg_statio_user_indexes), (SELECT sum(idx_blks_read)::int8 FROM pg_statio_user_indexes)`).
		Scan(&heapHit, &heapRead, &idxHit, &idxRead); err != nil {
		t.Fatal(err)
	}
	flush(t, admin)
	time.Sleep(100 * time.Millisecond) // let the collector's backend exit and flush (it is closed at cleanup; reads below only bound)
	dbHit1, dbRead1 := db()

	if got, want := s.Cache, newHitRate(heapHit, heapRead); got.Hit != want.Hit || got.Read != want.Read {
		t.Errorf("heap: Collect %+v, pg_statio_user_tables hit %d read %d", got, heapHit, heapRead)
	}
	if got := s.IndexCache; got.Hit != idxHit || got.Read != idxRead {
		t.Errorf("index: Collect %+v, pg_statio_user_indexes hit %d read %d", got, idxHit, idxRead)
	}
	if d := s.DatabaseCache; d.Hit < dbHit0 || d.Hit > dbHit1 || d.Read < dbRead0 || d.Read > dbRead1 {
		t.Errorf("database: Collect %+v, pg_stat_database before hit %d read %d, after hit %d read %d", d, dbHit0, dbRead0, dbHit1, dbRead1)
	}
	if d := s.DatabaseCache; d.Hit < s.Cache.Hit+s.IndexCache.Hit || d.Read < s.Cache.Read+s.IndexCache.Read {
		t.Errorf("database counters %+v below the tables' %+v and indexes' %+v", d, s.Cache, s.IndexCache)
	}

	// The pattern: each scan of big reads its pages, of which at most
	// shared_buffers can still be in the cache; small is a hit each time,
	// and each lookup through its index hits the one-page index (and the
	// page of small).
	minHit, maxHit := int64(smallReads+lookups), int64(smallReads+lookups+scans*sharedBuffers+2)
	minRead, maxRead := scans*(pages-sharedBuffers)-2, scans*pages+2
	if s.Cache.Hit < minHit || s.Cache.Hit > maxHit || s.Cache.Read < minRead || s.Cache.Read > maxRead {
		t.Errorf("heap blocks: hit %d read %d, want hit in [%d, %d], read in [%d, %d]", s.Cache.Hit, s.Cache.Read, minHit, maxHit, minRead, maxRead)
	}
	lo, hi := float64(minHit)/float64(minHit+maxRead), float64(maxHit)/float64(maxHit+minRead)
	if r := s.Cache.Rate; r == nil || *r < lo || *r > hi {
		t.Errorf("cache hit rate %v, want in [%.3f, %.3f]", deref(r), lo, hi)
	}
	t.Logf("known pattern: %d pages scanned %d times, cache hit rate %.3f (expected %.3f–%.3f), index hit rate %.3f, database %.3f",
		pages, scans, deref(s.Cache.Rate), lo, hi, deref(s.IndexCache.Rate), deref(s.DatabaseCache.Rate))
	if r := s.IndexCache.Rate; r == nil || *r < 0.99 || s.IndexCache.Hit < lookups {
		t.Errorf("index cache %+v (rate %v), want %d+ hits and a rate near 1", s.IndexCache, deref(r), lookups)
	}
	if s.StatsReset == nil || s.StatsReset.Before(before.Add(-time.Minute)) {
		t.Errorf("stats_reset %v, want the pg_stat_reset() of the test (~%v)", s.StatsReset, before)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// An idle-in-transaction session of the role counts as such; another role's
// session is "not visible" without pg_monitor; the longest transaction is
// the oldest one the role may see, with its state and the start of its query.
func TestConnectionsAndLongestTransaction(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	exec(t, admin, `CREATE ROLE monitor_user LOGIN IN ROLE pg_monitor`)
	t.Cleanup(func() { exec(t, connect(t, srv.Cluster.DSN("postgres")), `DROP ROLE monitor_user`) })

	early := connect(t, dsn) // a superuser's transaction, older than held's
	exec(t, early, `BEGIN`, `SELECT 'early-marker'`)
	time.Sleep(20 * time.Millisecond)
	held := connect(t, asRole(t, dsn, healthRole))
	heldPID := int(held.PgConn().PID())
	exec(t, held, `BEGIN`, `SELECT 'held-marker', txid_current()`)

	s := collect(t, connect(t, asRole(t, dsn, healthRole)))
	want := map[string]int{"active": 1, "idle in transaction": 1, StateNotVisible: 2} // Collect's; held; admin and early
	if got := s.Connections.ByState; !equalCounts(got, want) {
		t.Errorf("as %s: by state %v, want %v", healthRole, got, want)
	}
	if s.Connections.Database != 4 || s.Connections.Server < 4 || s.Connections.MaxConnections != 300 || s.Monitor {
		t.Errorf("connections %+v monitor %v", s.Connections, s.Monitor)
	}
	if len(s.Notes) == 0 || !strings.Contains(s.Notes[0], "2 session(s) of other roles") || !strings.Contains(s.Notes[0], "pg_monitor") {
		t.Errorf("notes %q", s.Notes)
	}
	lt := s.LongestTransaction
	if lt == nil || lt.PID != heldPID || lt.State != "idle in transaction" || !strings.HasPrefix(lt.Query, "SELECT 'held-marker'") ||
		lt.User != healthRole || lt.AgeSeconds <= 0 {
		t.Fatalf("longest transaction as %s: %+v, want pid %d", healthRole, lt, heldPID)
	}
	var xactStart time.Time
	if err := admin.QueryRow(context.Background(), `SELECT xact_start FROM pg_stat_activity WHERE pid = $1`, heldPID).Scan(&xactStart); err != nil {
		t.Fatal(err)
	}
	if !lt.StartedAt.Equal(xactStart) {
		t.Errorf("started at %v, pg_stat_activity says %v", lt.StartedAt, xactStart)
	}

	// With pg_monitor every session's state shows, and the superuser's older transaction.
	s = collect(t, connect(t, asRole(t, dsn, "monitor_user")))
	want = map[string]int{"active": 1, "idle in transaction": 2, "idle": 2} // admin and the first collector are idle
	if got := s.Connections.ByState; !equalCounts(got, want) || !s.Monitor || len(s.Notes) != 0 {
		t.Errorf("as monitor_user: by state %v (want %v), monitor %v, notes %q", got, want, s.Monitor, s.Notes)
	}
	if lt := s.LongestTransaction; lt == nil || !strings.HasPrefix(lt.Query, "SELECT 'early-marker'") || lt.User != "postgres" {
		t.Errorf("longest transaction as monitor_user: %+v", lt)
	}

	// Counted the same way as a direct query: admin asks while the
	// collector's connection is idle, then the collector asks while admin
	// is idle.
	exec(t, held, `COMMIT`)
	exec(t, early, `COMMIT`)
	mon := connect(t, asRole(t, dsn, "monitor_user"))
	rows, err := admin.Query(context.Background(), `SELECT state, count(*)::int FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend' GROUP BY state`)
	if err != nil {
		t.Fatal(err)
	}
	direct := map[string]int{}
	var st string
	var n int
	if _, err := pgx.ForEachRow(rows, []any{&st, &n}, func() error { direct[st] = n; return nil }); err != nil {
		t.Fatal(err)
	}
	s = collect(t, mon)
	if got := s.Connections.ByState; !equalCounts(got, direct) || direct["active"] != 1 || s.LongestTransaction != nil {
		t.Errorf("after commits: Collect %v, pg_stat_activity %v, longest %+v", got, direct, s.LongestTransaction)
	}
}

func equalCounts(got, want map[string]int) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// After a DELETE the dead tuples show per table, most first, with
// autovacuum's threshold; they equal pg_stat_user_tables.
func TestDeadTuples(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	exec(t, admin,
		`CREATE SCHEMA shard_0003`,
		`CREATE TABLE shard_0003."Order" (id int)`,
		`CREATE TABLE public.few (id int)`,
		`CREATE TABLE public.high (id int) WITH (autovacuum_vacuum_threshold = 5000)`,
		`INSERT INTO shard_0003."Order" SELECT generate_series(1, 1000)`,
		`INSERT INTO public.few SELECT generate_series(1, 1000)`,
		`INSERT INTO public.high SELECT generate_series(1, 1000)`)
	flush(t, admin) // before ANALYZE sets the counts, or the inserts' would add up after it
	exec(t, admin, `ANALYZE`,
		`DELETE FROM shard_0003."Order" WHERE id <= 300`,
		`DELETE FROM public.few WHERE id <= 10`,
		`DELETE FROM public.high WHERE id <= 100`,
	)
	flush(t, admin)
	s := collect(t, connect(t, asRole(t, dsn, healthRole)))
	want := []TableVacuum{
		{Table: `shard_0003."Order"`, DeadTuples: 300, LiveTuples: 700, Threshold: 250, Due: true},
		{Table: `public.high`, DeadTuples: 100, LiveTuples: 900, Threshold: 5200},
		{Table: `public.few`, DeadTuples: 10, LiveTuples: 990, Threshold: 250},
	}
	if len(s.Vacuum.Tables) != len(want) {
		t.Fatalf("tables %+v", s.Vacuum.Tables)
	}
	for i, w := range want {
		g := s.Vacuum.Tables[i]
		if g.Table != w.Table || g.DeadTuples != w.DeadTuples || g.LiveTuples != w.LiveTuples || g.Threshold != w.Threshold || g.Due != w.Due ||
			g.LastAutovacuum != nil {
			t.Errorf("table %d: %+v, want %+v", i, g, w)
		}
	}
	var dead int64
	if err := admin.QueryRow(context.Background(), `SELECT sum(n_dead_tup)::int8 FROM pg_stat_user_tables`).Scan(&dead); err != nil {
		t.Fatal(err)
	}
	if s.Vacuum.DeadTuples != dead || dead != 410 || s.Vacuum.LiveTuples != 2590 || s.Vacuum.TablesDue != 1 {
		t.Errorf("vacuum %+v, pg_stat_user_tables dead %d", s.Vacuum, dead)
	}
	exec(t, admin, `VACUUM shard_0003."Order"`)
	flush(t, admin)
	s = collect(t, connect(t, asRole(t, dsn, healthRole)))
	if g := s.Vacuum.Tables[0]; g.Table != "public.high" || s.Vacuum.DeadTuples != 110 || s.Vacuum.TablesDue != 0 {
		t.Errorf("after VACUUM: %+v", s.Vacuum)
	}
}

// pg_stat_statements: "not installed" until CREATE EXTENSION, then the
// database's statements with the most time first; other databases' are not
// shown.
func TestStatements(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	s := collect(t, connect(t, asRole(t, dsn, healthRole)))
	if s.Statements.Status != StatementsNotInstalled || len(s.Statements.Top) != 0 {
		t.Fatalf("statements before CREATE EXTENSION: %+v", s.Statements)
	}
	exec(t, admin, `CREATE EXTENSION pg_stat_statements`)
	other := srv.NewDatabase(t)
	exec(t, connect(t, other), `/* other-db */ SELECT pg_sleep(0.01)`)
	app := connect(t, asRole(t, dsn, healthRole))
	for i := 0; i < 3; i++ {
		exec(t, app, `/* app */ SELECT pg_sleep(0.05)`)
	}
	exec(t, admin, `SELECT 'admin-marker'`)
	s = collect(t, connect(t, asRole(t, dsn, healthRole)))
	if s.Statements.Status != "" || len(s.Statements.Top) == 0 {
		t.Fatalf("statements: %+v", s.Statements)
	}
	var app3 *Statement
	hidden := false
	for i, st := range s.Statements.Top {
		if i > 0 && st.TotalMS > s.Statements.Top[i-1].TotalMS {
			t.Errorf("not ordered by total time: %+v", s.Statements.Top)
		}
		if strings.HasPrefix(st.Query, "/* app */ SELECT pg_sleep(") {
			app3 = &s.Statements.Top[i]
		}
		if st.Query == "<insufficient privilege>" && st.User == "postgres" {
			hidden = true
		}
		if strings.Contains(st.Query, "other-db") {
			t.Errorf("another database's statement listed: %+v", st)
		}
	}
	if app3 == nil || app3.Calls != 3 || app3.User != healthRole || app3.MeanMS < 50 || app3.TotalMS < 150 || app3.QueryID == nil {
		t.Errorf("the role's pg_sleep statement: %+v in %+v", app3, s.Statements.Top)
	}
	if !hidden {
		t.Errorf("the superuser's statements should be listed with their text hidden: %+v", s.Statements.Top)
	}
	if s.Statements.StatsReset == nil {
		t.Errorf("no stats_reset from pg_stat_statements_info")
	}
}

// A logical slot behind by the WAL of an insert, and a physical follower
// that reported a replay position: lags in bytes equal pg_wal_lsn_diff
// taken around Collect.
func TestSlotsAndFollowers(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	logical, physical := "ns_logical", "ns_physical"
	exec(t, admin, `CREATE ROLE monitor_user2 LOGIN IN ROLE pg_monitor`, `CREATE TABLE t (id int, pad text)`)
	t.Cleanup(func() {
		c := connect(t, srv.Cluster.DSN("postgres"))
		c.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ($1, $2)`, logical, physical)
		c.Exec(context.Background(), `DROP ROLE monitor_user2`)
	})
	var startLSN string
	if err := admin.QueryRow(context.Background(), `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, logical).Scan(&startLSN); err != nil {
		t.Fatal(err)
	}
	if err := admin.QueryRow(context.Background(), `SELECT lsn::text FROM pg_create_physical_replication_slot($1, true)`, physical).Scan(&startLSN); err != nil {
		t.Fatal(err)
	}
	var restart string
	if err := admin.QueryRow(context.Background(), `SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, physical).Scan(&restart); err != nil {
		t.Fatal(err)
	}
	f := startFollower(t, srv.Cluster.DSN("postgres"), physical, restart)
	defer f.close()

	var generated int64
	var before string
	admin.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&before)
	exec(t, admin, `INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 10000) g`)
	admin.QueryRow(context.Background(), `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::int8`, before).Scan(&generated)

	lags := func() (slotLag, replayLag int64) {
		t.Helper()
		err := admin.QueryRow(context.Background(), `SELECT
			(SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8 FROM pg_replication_slots WHERE slot_name = $1),
			(SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::int8 FROM pg_stat_replication WHERE pid = $2)`, logical, f.pid).
			Scan(&slotLag, &replayLag)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	slot0, replay0 := lags()
	s := collect(t, connect(t, asRole(t, dsn, "monitor_user2")))
	slot1, replay1 := lags()

	var sl *Slot
	for i := range s.Slots {
		if s.Slots[i].Name == logical {
			sl = &s.Slots[i]
		}
	}
	if sl == nil || sl.Type != "logical" || sl.Plugin != "pgoutput" || sl.Active || sl.WALStatus != "reserved" ||
		sl.LagBytes == nil || *sl.LagBytes < slot0 || *sl.LagBytes > slot1 || *sl.LagBytes < generated ||
		sl.RetainedBytes == nil || *sl.RetainedBytes < *sl.LagBytes {
		t.Fatalf("logical slot %+v (lag %v, retained %v); pg_wal_lsn_diff before %d after %d; insert wrote %d bytes", sl, deref(sl.LagBytes), deref(sl.RetainedBytes), slot0, slot1, generated)
	}
	if sl.Database != s.Database {
		t.Errorf("slot database %q", sl.Database)
	}
	t.Logf("logical slot lag %d bytes (insert wrote %d)", *sl.LagBytes, generated)
	if len(s.Followers) != 1 {
		t.Fatalf("followers %+v", s.Followers)
	}
	fo := s.Followers[0]
	if fo.PID != f.pid || fo.Kind != "physical" || fo.Slot != physical || fo.User != "postgres" || fo.State == "" ||
		fo.ReplayLagBytes == nil || *fo.ReplayLagBytes < replay0 || *fo.ReplayLagBytes > replay1 || *fo.ReplayLagBytes < generated {
		t.Errorf("follower %+v (replay lag %v); pg_stat_replication before %d after %d", fo, deref(fo.ReplayLagBytes), replay0, replay1)
	}
	for _, x := range s.Slots {
		if x.Name == physical && (!x.Active || x.LagBytes == nil || *x.LagBytes < generated) {
			t.Errorf("physical slot %+v (lag %v)", x, deref(x.LagBytes))
		}
	}

	// Without pg_monitor the superuser's walsender is listed, its lag not.
	s = collect(t, connect(t, asRole(t, dsn, healthRole)))
	if len(s.Followers) != 1 || s.Followers[0].ReplayLagBytes != nil || s.Followers[0].State != "" ||
		len(s.Notes) == 0 || !strings.Contains(strings.Join(s.Notes, "\n"), "walsender(s) of other roles") {
		t.Errorf("as %s: followers %+v notes %q", healthRole, s.Followers, s.Notes)
	}
}

// Disk free shows for a superuser on this machine and is "not visible" to a
// role that may not read data_directory. The whole struct encodes to JSON
// with lists as arrays.
func TestDiskAndJSON(t *testing.T) {
	dsn := srv.NewDatabase(t)
	s := collect(t, connect(t, dsn))
	if s.Disk.FreeBytes == nil || s.Disk.TotalBytes == nil || *s.Disk.FreeBytes <= 0 || *s.Disk.FreeBytes > *s.Disk.TotalBytes ||
		s.Disk.Path != srv.Cluster.DataDir() || s.Disk.NotVisible != "" {
		t.Errorf("superuser on this host: disk %+v", s.Disk)
	}
	s = collect(t, connect(t, asRole(t, dsn, healthRole)))
	if s.Disk.FreeBytes != nil || !strings.HasPrefix(s.Disk.NotVisible, "not visible") {
		t.Errorf("%s: disk %+v", healthRole, s.Disk)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"replication_slots":[]`, `"followers":[]`, `"notes":[`, `"tables":[]`, `"top":[]`, `"free_bytes":null`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("JSON lacks %s: %s", k, b)
		}
	}
}
