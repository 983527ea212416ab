package router

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// These tests leave the pool's one backend with tenant t2's shard as its
// session search_path, then run tenant t4's work on it with the router's
// transaction-local settings: any statement that runs after those settings
// revert would read shard 2.

// onShard2 leaves the only backend of node a with the session search_path
// of shard 2: a non-DML first statement gets the setup as session settings.
func onShard2(t *testing.T, s *Server) {
	t.Helper()
	if got := tcConnect(t, s, "t2").q("SHOW search_path"); got != `D(shard_0002, public, pg_temp) C(SHOW) ZI` {
		t.Fatalf("t2 SHOW: %s", got)
	}
}

// sessionSwitchedToT4 returns a client (session pool mode) whose backend
// ran tenant t2's statement with session settings and whose session then
// switched to tenant t4: its next statement gets t4's setup on a backend
// on shard 2.
func sessionSwitchedToT4(t *testing.T, s *Server) *tc {
	t.Helper()
	c := tcConnect(t, s, "t2")
	if got := c.q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZI" {
		t.Fatalf("t2: %s", got)
	}
	if got := c.q("SET pgtenant.tenant = 't4'"); got != "C(SET) ZI" {
		t.Fatalf("set: %s", got)
	}
	return c
}

// committingProc creates, on node a, a procedure that commits and then
// reads whoami through the search_path.
func committingProc(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err = c.Exec(ctx, `CREATE OR REPLACE PROCEDURE public.shard_after_commit(INOUT s int)
LANGUAGE plpgsql AS $$ BEGIN COMMIT; SELECT shard INTO s FROM whoami; END $$`); err != nil {
		t.Fatal(err)
	}
}

// The settings the router sends again after a COMMIT in a pipeline go in a
// portal of its own: the client's unnamed portal, bound before and executed
// after, keeps its statement.
func TestLocalSetupKeepsUnnamedPortal(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
		t.Fatalf("select: %s", got)
	}
	c.send(&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{})
	if got := c.recv(1); got != "P P ZT" {
		t.Fatalf("Parse: %s", got)
	}
	c.send(&pgproto3.Bind{PreparedStatement: "commit"},
		&pgproto3.Describe{ObjectType: 'S', Name: "sel"},
		&pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "B C(COMMIT) B D(4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
	if got := c.q("SELECT pg_catalog.txid_current_if_assigned() IS NULL, shard FROM whoami"); got != "D(t,4) C(SELECT 1) ZI" {
		t.Fatalf("after: %s", got)
	}
}

// Same in an implicit transaction: a statement that is not DML (SHOW)
// bound to the unnamed portal, then another bound and both executed.
func TestLocalSetupKeepsUnnamedPortalImplicit(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "show", Query: "SHOW DateStyle"},
		&pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "sel"},
		&pgproto3.Execute{Portal: "p1"},
		&pgproto3.Bind{PreparedStatement: "show"},
		&pgproto3.Bind{DestinationPortal: "p2", PreparedStatement: "sel"},
		&pgproto3.Execute{},
		&pgproto3.Execute{Portal: "p2"},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B D(4) C(SELECT 1) B B D(ISO, MDY) C(SHOW) D(4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// A procedure that commits, called in a pipeline after DML: what it runs
// after its COMMIT still reads the tenant's shard.
func TestLocalSettingsCallCommits(t *testing.T) {
	committingProc(t)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "call", Query: "CALL public.shard_after_commit(NULL)"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "call"}, &pgproto3.Execute{},
		&pgproto3.Sync{}}
	want := serverRefusesCall(t, 4, "P P B D(4) C(SELECT 1) B D(4) C(CALL) ZI", msgs...)
	c := tcConnect(t, s, "t4")
	c.send(msgs...)
	if got := c.recv(1); got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// serverRefusesCall returns what PostgreSQL answers msgs with, sent straight
// to the node of shard (after beginLocal's two statements when begin is
// set), when that answer refuses a procedure's COMMIT or ROLLBACK (2D000):
// from PostgreSQL 18 on (commit 24da0e7) a statement after an Execute
// without a Sync runs in an implicit transaction block, where a procedure
// may not end the transaction. Otherwise it returns want, what the router
// answers on the servers before 18, which run such a procedure. Either way
// the router must answer as the server does, and what the procedure reads
// is the tenant's shard.
func serverRefusesCall(t *testing.T, shard int, want string, msgs ...pgproto3.FrontendMessage) string {
	t.Helper()
	return serverRefusesCallAfter(t, shard, false, want, msgs...)
}

func serverRefusesCallAfter(t *testing.T, shard int, begin bool, want string, msgs ...pgproto3.FrontendMessage) string {
	t.Helper()
	d := tcDirect(t, shard)
	if begin {
		d.q("BEGIN")
		d.q("SELECT shard FROM whoami")
	}
	d.send(msgs...)
	if got := d.recv(1); strings.Contains(got, "E(2D000:") {
		return got
	}
	return want
}

// After a COMMIT inside a pipeline, the rest of the pipeline is an implicit
// transaction: a procedure that commits there reads the tenant's shard, and
// so does what follows it.
func TestLocalSettingsCallAfterPipelineCommit(t *testing.T) {
	committingProc(t)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
		t.Fatalf("select: %s", got)
	}
	run := func(name string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}}
	}
	msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "call", Query: "CALL public.shard_after_commit(NULL)"}}
	for _, name := range []string{"commit", "sel", "call", "sel"} {
		msgs = append(msgs, run(name)...)
	}
	msgs = append(msgs, &pgproto3.Sync{})
	want := serverRefusesCallAfter(t, 4, true, "P P P B C(COMMIT) B D(4) C(SELECT 1) B D(4) C(CALL) B D(4) C(SELECT 1) ZI", msgs...)
	c.send(msgs...)
	if got := c.recv(1); got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
}

// A simple Query that ends the transaction holding local settings and goes
// on with more statements is refused (those would run on the backend's
// session search_path); one that ends with the COMMIT runs.
func TestLocalSettingsMultiQueryEnd(t *testing.T) {
	const refused = "E(0A000:a query cannot end this transaction and go on with more statements) ZE"
	for _, tc := range []struct{ query, want string }{
		{"COMMIT; BEGIN; SELECT shard FROM whoami", refused},
		{"SELECT 1 FROM whoami; COMMIT; BEGIN", refused},
		{"ROLLBACK; SELECT shard FROM whoami", refused},
		{"SELECT shard FROM whoami; COMMIT", "D(4) C(SELECT 1) C(COMMIT) ZI"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			onShard2(t, s)
			c := tcConnect(t, s, "t4")
			if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
				t.Fatalf("BEGIN: %s", got)
			}
			if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
				t.Fatalf("select: %s", got)
			}
			if got := c.q(tc.query); got != tc.want {
				t.Fatalf("got %s\nwant %s", got, tc.want)
			}
			if tc.want == refused {
				if got := c.q("ROLLBACK"); got != "C(ROLLBACK) ZI" {
					t.Fatalf("ROLLBACK: %s", got)
				}
			}
			if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZI" {
				t.Fatalf("after: %s", got)
			}
		})
	}
}

// The refusal does not depend on the backend: a transaction whose backend
// already had the tenant's settings (none sent for it) gets it too.
func TestMultiQueryEndRefusedAlways(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t2")
	for _, q := range []string{"BEGIN", "SELECT shard FROM whoami", "COMMIT; SELECT shard FROM whoami", "ROLLBACK", "SELECT shard FROM whoami"} {
		c.send(&pgproto3.Query{String: q})
	}
	want := "C(BEGIN) ZT D(2) C(SELECT 1) ZT E(0A000:a query cannot end this transaction and go on with more statements) ZE C(ROLLBACK) ZI D(2) C(SELECT 1) ZI"
	if got := c.recv(5); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}
