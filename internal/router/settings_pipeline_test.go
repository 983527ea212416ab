package router

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// More pipelines that end, undo or reset the router's settings part way
// (see noteEnding). Every test here leaves the pool's one backend with
// tenant t2's shard as its session search_path (onShard2), then runs tenant
// t4's work on it: D(2) anywhere means a statement ran on the wrong shard.

// beginLocal opens, for c (tenant t4), a transaction holding the router's
// transaction-local settings.
func beginLocal(t *testing.T, c *tc) {
	t.Helper()
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
		t.Fatalf("select: %s", got)
	}
}

// A COMMIT portal bound in one Sync round and executed in the next: the
// SELECT bound after it runs in a new transaction and still reads the
// tenant's shard.
func TestSettingsCommitPortalExecutedAfterSync(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	c.send(&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "commit"},
		&pgproto3.Sync{})
	if got := c.recv(1); got != "P P B ZT" {
		t.Fatalf("bind commit: %s", got)
	}
	c.send(&pgproto3.Execute{Portal: "c"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "C(COMMIT) B D(4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// rollingBackProc creates, on node a, a procedure that rolls back and then
// reads whoami through the search_path.
func rollingBackProc(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err = c.Exec(ctx, `CREATE OR REPLACE PROCEDURE public.shard_after_rollback(INOUT s int)
LANGUAGE plpgsql AS $$ BEGIN ROLLBACK; SELECT shard INTO s FROM whoami; END $$`); err != nil {
		t.Fatal(err)
	}
}

// A procedure that rolls back, called in a pipeline after DML: the session
// setup sent before the CALL is undone with it, and the router must not
// take it as committed: the next client on the backend reads its own
// shard. (What the procedure itself reads after its ROLLBACK runs on the
// backend's committed session search_path, here shard 2: the one case of
// transaction-local settings not covered, see noteEnding.)
func TestSettingsCallRollsBack(t *testing.T) {
	rollingBackProc(t)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "call", Query: "CALL public.shard_after_rollback(NULL)"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "call"}, &pgproto3.Execute{},
		&pgproto3.Sync{}}
	refused := serverRefusesCall(t, 4, "", msgs...) // PostgreSQL 18 refuses the procedure's ROLLBACK
	c := tcConnect(t, s, "t4")
	c.send(msgs...)
	got1 := c.recv(1)
	got2 := tcConnect(t, s, "t4").q("SELECT shard FROM whoami")
	if refused != "" && got1 != refused {
		t.Errorf("pipeline: %s\nwant %s (PostgreSQL)", got1, refused)
	}
	if refused == "" && (!strings.HasPrefix(got1, "P P B D(4) C(SELECT 1) B D(") || !strings.HasSuffix(got1, ") C(CALL) ZI")) {
		t.Errorf("pipeline: %s\nwant P P B D(4) C(SELECT 1) B D(…) C(CALL) ZI", got1)
	}
	if want := "D(4) C(SELECT 1) ZI"; got2 != want {
		t.Errorf("next client on the backend: %s\nwant %s", got2, want)
	}
}

// DML (local settings), a statement that is not DML, ROLLBACK, DML in one
// pipeline: the last SELECT reads the tenant's shard, and so does the next
// client on the backend.
func TestSettingsRollbackUndoesSessionSetup(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "show", Query: "SHOW DateStyle"},
		&pgproto3.Parse{Name: "rb", Query: "ROLLBACK"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "show"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "rb"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	got1 := c.recv(1)
	got2 := tcConnect(t, s, "t4").q("SELECT shard FROM whoami")
	if want := "P P P B D(4) C(SELECT 1) B D(ISO, MDY) C(SHOW) B C(ROLLBACK) B D(4) C(SELECT 1) ZI"; got1 != want {
		t.Errorf("pipeline: %s\nwant %s", got1, want)
	}
	if want := "D(4) C(SELECT 1) ZI"; got2 != want {
		t.Errorf("next client on the backend: %s\nwant %s", got2, want)
	}
}

// The 0A000 refusal of "COMMIT; more" does not hit statements that do not
// end the transaction: ROLLBACK TO SAVEPOINT, and the END of a BEGIN ATOMIC
// function body.
func TestSettingsMultiQueryFalsePositives(t *testing.T) {
	for _, tc := range []struct{ pre, query, want string }{
		{"SAVEPOINT a", "ROLLBACK TO SAVEPOINT a; SELECT shard FROM whoami", "C(ROLLBACK) D(4) C(SELECT 1) ZT"},
		{"SAVEPOINT a", "ROLLBACK TO a; SELECT shard FROM whoami", "C(ROLLBACK) D(4) C(SELECT 1) ZT"},
		{"", "CREATE FUNCTION public.settings_f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT shard FROM whoami",
			"C(CREATE FUNCTION) D(4) C(SELECT 1) ZT"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			onShard2(t, s)
			c := tcConnect(t, s, "t4")
			beginLocal(t, c)
			if tc.pre != "" {
				t.Log(tc.pre, c.q(tc.pre))
			}
			if got := c.q(tc.query); got != tc.want {
				t.Errorf("got %s\nwant %s", got, tc.want)
			}
			t.Log("ROLLBACK", c.q("ROLLBACK"))
		})
	}
}

// Session pool mode: a session switches tenant on its kept backend and
// the setup sent with its first statement is rolled back by a ROLLBACK
// later in the same pipeline: the statements after the ROLLBACK, and every
// later one of the session, read the new tenant's shard.
func TestSettingsSessionModeRollbackUndoesSetup(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := sessionSwitchedToT4(t, s)
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "rb", Query: "ROLLBACK"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "rb"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B D(4) C(SELECT 1) B C(ROLLBACK) B D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("pipeline: %s\nwant %s", got, want)
	}
	if got, want := c.q("SELECT shard FROM whoami"), "D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("after: %s\nwant %s", got, want)
	}
}

// Two portals that may end the transaction bound before either runs: the
// SELECT bound after the first is executed reads the tenant's shard.
func TestSettingsTwoEndingPortals(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	c.send(&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{DestinationPortal: "c1", PreparedStatement: "commit"},
		&pgproto3.Bind{DestinationPortal: "c2", PreparedStatement: "commit"},
		&pgproto3.Execute{Portal: "c1"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B B C(COMMIT) B D(4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// COMMIT AND CHAIN keeps the transaction open (status 'T') but drops the
// local settings; the next statement gets them again, as a Query and in a
// pipeline.
func TestSettingsCommitAndChain(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	if got := c.q("COMMIT AND CHAIN"); got != "C(COMMIT) ZT" {
		t.Fatalf("chain: %s", got)
	}
	if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
		t.Fatalf("after chain: %s", got)
	}
	c.send(&pgproto3.Parse{Name: "chain", Query: "COMMIT AND CHAIN"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "show", Query: "SHOW search_path"},
		&pgproto3.Bind{PreparedStatement: "chain"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "show"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), `P P P B C(COMMIT) B D(shard_0004, public, pg_temp) C(SHOW) B D(4) C(SELECT 1) ZT`; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
	if got := c.q("ROLLBACK"); got != "C(ROLLBACK) ZI" {
		t.Fatalf("rollback: %s", got)
	}
}

// PREPARE TRANSACTION ends the transaction holding the local settings as
// COMMIT does: the statements after it (in the same Query: refused; bound
// after it in a pipeline) read the tenant's shard. Needs a node with
// max_prepared_transactions > 0: it starts its own.
func TestSettingsPrepareTransaction(t *testing.T) {
	srv, err := pgtestStartPrepared()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE pgt"); err != nil {
		t.Fatal(err)
	}
	admin.Close(ctx)
	pc, err := pgx.Connect(ctx, srv.Cluster.DSN("pgt"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	for sh := 0; sh < testShards; sh++ {
		if err := createShard(ctx, pc, sh); err != nil {
			t.Fatal(err)
		}
	}
	m := testMap()
	m.Nodes = map[string]placement.Node{"p": {Name: "p", DSN: srv.Cluster.DSN("pgt")}}
	for i := range m.Shards {
		m.Shards[i].Node = "p"
	}
	for _, tc := range []struct {
		name string
		run  func(c *tc) string
		want string
	}{
		{"query", func(c *tc) string {
			return c.q("PREPARE TRANSACTION 'settingsq'; SELECT shard FROM whoami")
		}, "E(0A000:a query cannot end this transaction and go on with more statements) ZE"},
		{"pipeline", func(c *tc) string {
			c.send(&pgproto3.Parse{Name: "prep", Query: "PREPARE TRANSACTION 'settingsp'"},
				&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
				&pgproto3.Bind{PreparedStatement: "prep"}, &pgproto3.Execute{},
				&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			return c.recv(1)
		}, "P P B C(PREPARE TRANSACTION) B D(4) C(SELECT 1) ZI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, m)
			if got := tcConnect(t, s, "t2").q("SHOW search_path"); got != `D(shard_0002, public, pg_temp) C(SHOW) ZI` {
				t.Fatalf("t2 SHOW: %s", got)
			}
			c := tcConnect(t, s, "t4")
			beginLocal(t, c)
			got := tc.run(c)
			pc.Exec(ctx, "ROLLBACK PREPARED 'settingsq'")
			pc.Exec(ctx, "ROLLBACK PREPARED 'settingsp'")
			if got != tc.want {
				t.Errorf("got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func pgtestStartPrepared() (*pgtest.Server, error) {
	return pgtest.StartWith("settings", map[string]string{"max_prepared_transactions": "4"})
}

// A Query refused by the router (0A000) after unsynced extended messages:
// the earlier messages' answers come first, and their implicit transaction
// is rolled back as a server error would (the INSERT is not committed by
// the next Sync). The INSERT is prepared first and bound after tenant t2
// took the backend back to shard 2: its Bind gets the router's
// transaction-local settings, which the COMMIT would revert. (A Parse gets
// session settings, see sendSetup, with which the Query would run.)
func TestSettingsRefusedQueryAfterUnsynced(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t4")
	c.send(&pgproto3.Parse{Name: "ins", Query: "INSERT INTO sink(body) VALUES ('settings-refused')"}, &pgproto3.Sync{})
	if got := c.recv(1); got != "P ZI" {
		t.Fatalf("parse: %s", got)
	}
	onShard2(t, s)
	c.send(&pgproto3.Bind{PreparedStatement: "ins"}, &pgproto3.Execute{},
		&pgproto3.Query{String: "SELECT 1 FROM whoami; COMMIT; SELECT shard FROM whoami"})
	got := c.recv(1)
	c.send(&pgproto3.Sync{})
	got += " | " + c.recv(1)
	got += " | " + c.q("SELECT count(*) FROM sink WHERE body = 'settings-refused'")
	want := "B C(INSERT 0 1) E(0A000:a query cannot end this transaction and go on with more statements) ZI | ZI | D(0) C(SELECT 1) ZI"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// The ReadyForQuery of the router's own Sync (sent with the first statement
// after a deferred BEGIN) is read at the client's Flush, after the client
// bound COMMIT: the SELECT bound after the COMMIT still reads the tenant's
// shard.
func TestSettingsFlushClearsEndBound(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	c.send(&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{DestinationPortal: "c", PreparedStatement: "commit"},
		&pgproto3.Flush{})
	c.send(&pgproto3.Execute{Portal: "c"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B D(4) C(SELECT 1) B C(COMMIT) B D(4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// After a COMMIT inside a pipeline, the ended transaction's tenant (SET
// LOCAL pgtenant.tenant, a /* tenant: */ hint) no longer applies: the
// SELECT bound after the COMMIT runs for the session's tenant, or gets
// 25001 when that would need another backend before the Sync.
func TestSettingsTenantOutlivesPipelineCommit(t *testing.T) {
	for _, tc := range []struct {
		name, set, sel, after, want string
	}{
		{"set local", "SET LOCAL pgtenant.tenant = 't6'", "SELECT shard FROM whoami", "", "D(4)"},
		{"hint", "", "SELECT /* tenant: t6 */ shard FROM whoami", "", "D(4)"},
		{"session set after commit", "SET LOCAL pgtenant.tenant = 't4'", "SELECT shard FROM whoami", "SET pgtenant.tenant = 't6'", "D(6)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			onShard2(t, s)
			c := tcConnect(t, s, "t4")
			if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
				t.Fatalf("BEGIN: %s", got)
			}
			if tc.set != "" {
				if got := c.q(tc.set); got != "C(SET) ZT" {
					t.Fatalf("SET: %s", got)
				}
			}
			t.Log("in txn:", c.q(tc.sel))
			msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
				&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
				&pgproto3.Bind{PreparedStatement: "commit"}, &pgproto3.Execute{}}
			if tc.after != "" {
				msgs = append(msgs, &pgproto3.Parse{Name: "set", Query: tc.after},
					&pgproto3.Bind{PreparedStatement: "set"}, &pgproto3.Execute{})
			}
			msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			c.send(msgs...)
			got := c.recv(1)
			if !strings.Contains(got, "B "+tc.want+" C(SELECT 1) ZI") && !strings.Contains(got, "E(25001") {
				t.Fatalf("pipeline: %s\nwant the last SELECT to give %s (or a 25001 error)", got, tc.want)
			}
		})
	}
}

// RESET ALL in a transaction resets the router's search_path and tenant id
// too: the statements after it get them again.
func TestSettingsResetAllInTransaction(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	if got := c.q("RESET ALL"); got != "C(RESET) ZT" {
		t.Fatalf("RESET ALL: %s", got)
	}
	got := c.q("SELECT shard FROM whoami")
	c.q("ROLLBACK")
	if got != "D(4) C(SELECT 1) ZT" && !strings.Contains(got, "E(0A000") {
		t.Fatalf("after RESET ALL: %s", got)
	}
}

// A CALL of a procedure that commits, sent as a simple Query after
// unsynced extended DML (local settings open, status 'I'): what it reads
// after its COMMIT is the tenant's shard.
func TestSettingsQueryCallAfterUnsynced(t *testing.T) {
	committingProc(t)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Query{String: "CALL public.shard_after_commit(NULL)"}}
	want := serverRefusesCall(t, 4, "P B D(4) C(SELECT 1) D(4) C(CALL) ZI", msgs...)
	c := tcConnect(t, s, "t4")
	c.send(msgs...)
	if got := c.recv(1); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
	if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZI" {
		t.Fatalf("after: %s", got)
	}
}

// An aborted explicit transaction (status 'E') ended by a pipelined
// ROLLBACK: the statements after it get the settings again, and the
// unnamed portal the client binds in the new implicit transaction is
// described and executed as its own.
func TestSettingsRollbackAbortedPipeline(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	if got := c.q("SELECT 1/0 FROM whoami"); !strings.HasPrefix(got, "E(22012") || !strings.HasSuffix(got, "ZE") {
		t.Fatalf("error: %s", got)
	}
	c.send(&pgproto3.Parse{Name: "rb", Query: "ROLLBACK"},
		&pgproto3.Bind{PreparedStatement: "rb"}, &pgproto3.Execute{},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "show", Query: "SHOW search_path"},
		&pgproto3.Bind{PreparedStatement: "sel"},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "show"},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
		&pgproto3.Execute{Portal: "p"},
		&pgproto3.Sync{})
	if got, want := c.recv(1), `P B C(ROLLBACK) P P B B D(4) C(SELECT 1) D(shard_0004, public, pg_temp) C(SHOW) ZI`; got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

// A Query whose last statement is COMMIT AND CHAIN (or ROLLBACK AND CHAIN)
// runs, and the next statement, in the chained transaction, gets the local
// settings again.
func TestSettingsMultiQueryCommitAndChain(t *testing.T) {
	for _, q := range []string{"SELECT 1 FROM whoami; COMMIT AND CHAIN", "SELECT 1 FROM whoami; ROLLBACK AND CHAIN"} {
		t.Run(q, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			onShard2(t, s)
			c := tcConnect(t, s, "t4")
			beginLocal(t, c)
			t.Log(c.q(q))
			got := c.q("SELECT shard FROM whoami")
			c.q("ROLLBACK")
			if want := "D(4) C(SELECT 1) ZT"; got != want {
				t.Fatalf("after %q: %s\nwant %s", q, got, want)
			}
		})
	}
}
