package router

// Cases from a second review: state the router must forget or keep when
// the server skips, rolls back or never finishes what it was sent.

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// R1: an untracked set_config in a pipeline, then an extended RESET: the
// RESET makes the backend's SessionSig "known" again; next client inherits.
func TestStateResetAfterSetConfigLeaks(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	a.send(&pgproto3.Parse{Query: "SELECT set_config('work_mem','64kB',false) FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "RESET statement_timeout"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(a.recv(1))
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT current_setting('work_mem') FROM whoami"); !strings.HasPrefix(got, "D(4MB)") {
		t.Fatalf("client b's work_mem: %s, want 4MB", got)
	}
}

// R2: same with search_path: next client on tenant t2 reads another shard.
func TestStateSearchPathCrossTenant(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	a.send(&pgproto3.Parse{Query: "SELECT set_config('search_path','shard_0004',false) FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "RESET statement_timeout"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(a.recv(1))
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT shard FROM whoami"); !strings.HasPrefix(got, "D(2)") {
		t.Fatalf("tenant t2 (shard 2) reads: %s", got)
	}
}

// R3: an extended RESET skipped by the server (earlier error in the
// pipeline): the router forgot the setting and marked the backend clean.
func TestStateSkippedResetLeaks(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	t.Log(a.q("SET statement_timeout = '1234ms'"))
	a.send(&pgproto3.Parse{Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "RESET statement_timeout"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(a.recv(1))
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT current_setting('statement_timeout') FROM whoami"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("client b's statement_timeout: %s, want 0", got)
	}
}

// R4: an untracked change and a tracked SET commit in one transaction:
// endTxnSets marks the backend as having exactly the session's settings.
func TestStateTrackedSetHidesUntracked(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	b := tcConnect(t, s, "t2")
	t.Log(a.q("SET statement_timeout = '5s'"))
	t.Log(b.q("SET statement_timeout = '5s'"))
	t.Log(a.q("BEGIN"), a.q("SELECT set_config('work_mem','64kB',false) FROM whoami"),
		a.q("SET statement_timeout = '5s'"), a.q("COMMIT"))
	if got := b.q("SELECT current_setting('work_mem') FROM whoami"); !strings.HasPrefix(got, "D(4MB)") {
		t.Fatalf("client b's work_mem: %s, want 4MB", got)
	}
}

// R5: a router error in the second segment of a pipeline with two Syncs.
func TestStateLocalErrorAfterSync(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'r5'"))
	c.send(&pgproto3.Parse{Query: "SELECT 1 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('r5')"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := c.recv(2)
	n := c.q("SELECT count(*) FROM sink WHERE body = 'r5'")
	if got != "P B D(1) C(SELECT 1) ZI P B C(INSERT 0 1) E(26000:prepared statement \"nosuch\" does not exist) ZI" || !strings.HasPrefix(n, "D(0)") {
		t.Fatalf("answers: %s; rows: %s", got, n)
	}
}

// R6: a client that disconnects with an extended pipeline not synced: its
// uncommitted work must not be committed by the backend's next user.
// R7: the backend dies while idle in the pool; the next client's deferred
// BEGIN + statement: one ReadyForQuery per Query.
// R8: server error then router error in the same pipeline segment.
// R9: unsynced work, then a statement for another tenant.
// R6 in session mode.
// R10: a SET before a savepoint survives ROLLBACK TO and COMMIT.
// R11: RESET ALL in session mode, no startup tenant.
func TestStateResetAllNoStartTenant(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	c := tcConnect(t, s, "")
	t.Log(c.q("SET pgtenant.tenant = 't2'"), c.q("SET work_mem = '64kB'"), c.q("SELECT 1 FROM whoami"))
	r := c.q("RESET ALL")
	t.Log("reset all:", r)
	t.Log(c.q("SET pgtenant.tenant = 't2'"))
	got := c.q("SELECT current_setting('work_mem') FROM whoami")
	if strings.Contains(r, "E(") || !strings.HasPrefix(got, "D(4MB)") {
		t.Fatalf("RESET ALL: %s; work_mem then %s", r, got)
	}
}

// R12: router error in a pipeline behind a deferred BEGIN (writeBegin's own
// Sync is pending): answers out of order.
func TestStateLocalErrorAfterDeferredBegin(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"))
	c.send(&pgproto3.Parse{Query: "SELECT 1 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := c.recv(1); got != `P B D(1) C(SELECT 1) E(26000:prepared statement "nosuch" does not exist) ZE` {
		t.Fatalf("answers: %s", got)
	}
}

// R13: same for a client with a session setting (the setup Query is pending).
func TestStateLocalErrorAfterSetupQuery(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	u := strings.Replace(routerURL(s, "t2"), "options=", "options=-c%20statement_timeout%3D5s%20", 1)
	pc, err := pgconn.Connect(ctx(t), u)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	c := &tc{t: t, pc: pc, fe: pc.Frontend()}
	t.Log(c.q("DELETE FROM sink WHERE body = 'r13'"))
	t.Log(c.q("SHOW statement_timeout"))
	d := tcConnect(t, s, "t2")
	t.Log(d.q("SELECT 1 FROM whoami")) // the backend loses c's settings
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('r13')"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := c.recv(1)
	n := c.q("SELECT count(*) FROM sink WHERE body = 'r13'")
	if got != `P B C(INSERT 0 1) E(26000:prepared statement "nosuch" does not exist) ZI` || !strings.HasPrefix(n, "D(0)") {
		t.Fatalf("answers: %s; rows: %s", got, n)
	}
}

func TestStateSetCommitLocalOpen(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"), c.q("SET statement_timeout = '1234ms'"), c.q("SELECT 1 FROM whoami"), c.q("COMMIT"))
	a := c.q("SELECT current_setting('statement_timeout') FROM whoami")
	b := c.q("/* tenant: t3 */ SELECT current_setting('statement_timeout') FROM whoami")
	d := tcConnect(t, s, "t2")
	o := d.q("SELECT current_setting('statement_timeout') FROM whoami")
	if !strings.HasPrefix(a, "D(1234ms)") || a != b || !strings.HasPrefix(o, "D(0)") {
		t.Fatalf("a %s b %s other %s", a, b, o)
	}
}

// R14: a DEALLOCATE ALL the server skips (earlier error in the pipeline):
// the router forgets statements that still exist, then re-Parses them.
func TestStateSkippedDeallocate(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"), c.q("SELECT 1 FROM whoami"), c.q("COMMIT")) // prepares pgtenant_begin
	c.send(&pgproto3.Parse{Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "DEALLOCATE ALL"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	for i := 0; i < 3; i++ {
		d := tcConnect(t, s, "t2")
		t.Log("other client:", d.q("BEGIN"), d.q("INSERT INTO sink (body) VALUES ('r14')"), d.q("ROLLBACK"))
	}
	t.Log(c.q("SELECT count(*) FROM sink WHERE body = 'r14'"))
	b := c.q("BEGIN")
	got := c.q("SELECT shard FROM whoami")
	if got != "D(2) C(SELECT 1) ZT" {
		t.Fatalf("BEGIN %s; SELECT: %s", b, got)
	}
	t.Log(c.q("COMMIT"))
}

// R14b: same with a multi-statement simple Query.
func TestStateSkippedDeallocateMulti(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"), c.q("SELECT 1 FROM whoami"), c.q("COMMIT"))
	t.Log(c.q("SELECT 1/0 FROM whoami; DEALLOCATE ALL"))
	b := c.q("BEGIN")
	got := c.q("SELECT shard FROM whoami")
	if !strings.HasPrefix(got, "D(2) C(SELECT 1) ZT") {
		t.Fatalf("BEGIN %s; SELECT: %s", b, got)
	}
	t.Log(c.q("COMMIT"))
}

// R15: set_config of the tenant plus another setting in one statement.
func TestStateTenantSetConfigPlusOther(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	t.Log(a.q("SELECT set_config('pgtenant.tenant','t2',false), set_config('work_mem','64kB',false) FROM whoami"))
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT current_setting('work_mem') FROM whoami"); !strings.HasPrefix(got, "D(4MB)") {
		t.Fatalf("client b's work_mem: %s, want 4MB", got)
	}
}

// R16: set_config of a reserved setting is not refused.

// A backend killed while idle in the pool, before a deferred BEGIN: the
// pool notices (pool.Config.CheckIdle) and the transaction runs on a new
// connection, with the answers in order.
func TestStateDeadBackendDeferredBegin(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	terminate(t, pidOf(c.q("SELECT pg_backend_pid() FROM whoami")))
	time.Sleep(150 * time.Millisecond) // idle longer than the pool's CheckIdle
	// The pool notices the dead connection and hands out a new one.
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	if got := c.q("SELECT 1 FROM whoami"); got != "D(1) C(SELECT 1) ZT" {
		t.Fatalf("first statement after the backend died: %s", got)
	}
	if got := c.q("SELECT 'next'"); got != "D(next) C(SELECT 1) ZT" {
		t.Fatalf("next query answered %s", got)
	}
}

// Extended-protocol work a client never ended with Sync is rolled back, not
// committed by whoever uses the backend next: when the client disconnects
// (transaction and session mode) and when it switches tenants (refused with
// 25001 until it sends Sync).
func TestStateNoSyncDisconnect(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'r6'"))
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('r6')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	time.Sleep(300 * time.Millisecond)
	c.pc.Conn().Close()
	time.Sleep(200 * time.Millisecond)
	d := tcConnect(t, s, "t2")
	if got := d.q("SELECT count(*) FROM sink WHERE body = 'r6'"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("rows of a client that never synced: %s, want 0", got)
	}
}

func TestStateNoSyncSwitchTenant(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'r9'"))
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('r9')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	time.Sleep(300 * time.Millisecond)
	if got := c.q("/* tenant: t3 */ SELECT 1 FROM whoami"); !strings.Contains(got, "E(25001") {
		t.Fatalf("switching tenants before Sync: %s, want 25001", got)
	}
	d := tcConnect(t, s, "t2")
	if got := d.q("SELECT count(*) FROM sink WHERE body = 'r9'"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("another client sees c's unsynced insert: %s", got)
	}
	c.send(&pgproto3.Sync{})
	t.Log("c sync:", c.recv(1))
}

func TestStateNoSyncDisconnectSession(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'r6s'"))
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('r6s')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	time.Sleep(300 * time.Millisecond)
	c.pc.Conn().Close()
	time.Sleep(500 * time.Millisecond)
	d := tcConnect(t, s, "t2")
	if got := d.q("SELECT count(*) FROM sink WHERE body = 'r6s'"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("rows of a client that never synced: %s, want 0", got)
	}
}
