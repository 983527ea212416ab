package router

// Session 13's trials of the router's leftovers: a described statement
// prepared afresh on another backend after DDL (the unnamed one too), the
// listening guard of a session-mode client after DISCARD ALL / UNLISTEN *
// sent by Parse/Bind/Execute or alone in a committed block, and hostile
// pipelines mixing these with errors and a terminated backend.

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"slices"
	"time"
)

// A client describes a statement in one transaction (pgx's describe-exec
// mode: Parse, Describe, Sync), a DDL changes its column's type, and the
// client binds it in the next transaction, which lands on another backend
// (a holder keeps the first one). On a server the Bind fails with 0A000
// "cached plan must not change result type". Before, the router prepared
// the unnamed statement afresh on the other backend without a check and
// returned rows of the new shape: an int4 made float4 is as wide, and a
// driver decoding with the described int4 gets wrong numbers, silently.
// Named statements had the check; both are tried, with the DDL run past
// the router, through it by another client, and by the same client (a
// named statement of its own, which keeps the unnamed one, as on a
// server). A Describe of the changed statement gets the server's answer
// (its parameters, then 0A000); a Parse of it again gets the new shape.
func TestDescribedStatementMovedAfterDDL(t *testing.T) {
	for _, origin := range []string{"direct", "other client", "same client"} {
		for _, name := range []string{"", "s_a"} {
			t.Run(origin+"/"+map[string]string{"": "unnamed", "s_a": "named"}[name], func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: PoolTransaction, DDL: DDLAllow}, nil)
				table := "a10_moved"
				a10Table(t, "t1", table, "a int", "1")
				const alter = "ALTER TABLE a10_moved ALTER COLUMN a TYPE float4"
				fe, nc := rawConn(t, s, "t1")
				holder, hnc := rawConn(t, s, "t1")
				other, onc := rawConn(t, s, "t1")
				change := rawStep{name: "alter", ddl: "ALTER TABLE %s ALTER COLUMN a TYPE float4"}
				switch origin {
				case "other client":
					change = rawStep{name: "alter", fe: 2, send: []pgproto3.FrontendMessage{&pgproto3.Query{String: alter}}, want: []string{"C", "Z I"}}
				case "same client":
					change = rawStep{name: "alter", send: []pgproto3.FrontendMessage{
						&pgproto3.Parse{Name: "s_ddl", Query: alter}, &pgproto3.Bind{PreparedStatement: "s_ddl"}, &pgproto3.Execute{}, &pgproto3.Sync{},
					}, want: []string{"1", "2", "C", "Z I"}}
				}
				runRawSteps(t, []*pgproto3.Frontend{fe, holder, other}, []net.Conn{nc, hnc, onc}, shardDDL(t, "t1"), table, []rawStep{
					{name: "prepare and describe", send: []pgproto3.FrontendMessage{
						&pgproto3.Parse{Name: name, Query: "SELECT a FROM a10_moved"},
						&pgproto3.Describe{ObjectType: 'S', Name: name},
						&pgproto3.Sync{},
					}, want: []string{"1", "?", "T", "Z I"}},
					{name: "holder takes the backend", fe: 1, send: []pgproto3.FrontendMessage{
						&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"},
					}, want: []string{"C", "T", "D 1", "C", "Z T"}},
					change,
					{name: "bind the changed statement", send: []pgproto3.FrontendMessage{
						&pgproto3.Bind{PreparedStatement: name, ResultFormatCodes: []int16{1}},
						&pgproto3.Execute{},
						&pgproto3.Sync{},
					}, want: []string{"E 0A000", "Z I"}},
					{name: "describe it", send: []pgproto3.FrontendMessage{
						&pgproto3.Describe{ObjectType: 'S', Name: name},
						&pgproto3.Sync{},
					}, want: []string{"?", "E 0A000", "Z I"}},
					{name: "prepared again", send: []pgproto3.FrontendMessage{
						&pgproto3.Close{ObjectType: 'S', Name: name},
						&pgproto3.Parse{Name: name, Query: "SELECT a FROM a10_moved"},
						&pgproto3.Describe{ObjectType: 'S', Name: name},
						&pgproto3.Bind{PreparedStatement: name},
						&pgproto3.Execute{},
						&pgproto3.Sync{},
					}, want: []string{"3", "1", "?", "T", "2", "D 1", "C", "Z I"}},
					{name: "holder ends", fe: 1, send: []pgproto3.FrontendMessage{
						&pgproto3.Query{String: "COMMIT"},
					}, want: []string{"C", "Z I"}},
				})
			})
		}
	}
}

// What --ddl decides, through the router (the lexer's cases are in
// testdata/ddl_cases.json). With refuse: an index on a temporary table
// made earlier in the same string runs (before, it was refused, though it
// changes no shard); a SELECT with a column label spelled insert before
// INTO under WITH, and EXPLAIN ANALYZE SELECT ... INTO in a string a DO block EXECUTEs,
// are refused and create nothing (before, each created its table on the
// tenant's shard). With warn: CREATE TABLE public.x gets no warning that
// it applies to the shard only (it is the node's schema's).
func TestDDLMissedAndFalsePositives(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLRefuse}, nil)
	dropEverywhere(t, "a10_lbl", "a10_do")
	c := connect(t, s, "t6", pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx(t), "CREATE TEMP TABLE a10_tmp (id int) ON COMMIT DROP; CREATE INDEX ON a10_tmp (id); INSERT INTO a10_tmp VALUES (1)"); err != nil {
		t.Errorf("temporary table and its index, refuse mode: %v", err)
	}
	for _, q := range []string{
		"WITH x AS (SELECT 1) SELECT 1 insert INTO a10_lbl FROM x",
		"DO $$ BEGIN EXECUTE 'EXPLAIN ANALYZE SELECT 1 AS x INTO a10_do'; END $$",
	} {
		_, err := c.Exec(ctx(t), q)
		if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "0A000" {
			t.Errorf("%s: %v, want 0A000", q, err)
		}
	}
	for _, n := range []string{"a10_lbl", "a10_do"} {
		if got := tableSchemas(t, n); len(got) != 0 {
			t.Errorf("ddl refuse: %s created in %v", n, got)
		}
	}

	w := startRouter(t, Config{DDL: DDLWarn}, nil)
	wc, notices := noticeConn(t, w, "t6", pgx.QueryExecModeSimpleProtocol)
	if _, err := wc.Exec(ctx(t), "CREATE TABLE public.a10_pub (id int); DROP TABLE public.a10_pub"); err != nil {
		t.Fatal(err)
	}
	if _, err := wc.Exec(ctx(t), "CREATE TABLE a10_shard (id int); DROP TABLE a10_shard"); err != nil {
		t.Fatal(err)
	}
	if got := notices(); len(got) != 1 || got[0].Code != "01000" {
		t.Errorf("warn mode: notices %v, want one 01000 (for the shard's table, not public's)", got)
	}
}

// The listening guard of a session-mode client (it may not switch tenants
// while its backend listens) follows the server: it is lifted when
// UNLISTEN * or DISCARD ALL completed in a transaction that committed,
// however sent. Before, only UNLISTEN * or DISCARD ALL sent alone by
// Query outside a block lifted it: sent by Parse/Bind/Execute, or alone in
// an explicit block that commits, the client was refused a switch it
// should have been allowed. Each case checks the server's own answer
// (pg_listening_channels) against the router's: a switch is allowed only
// when the server no longer listens, and, for the cases listed as
// stopped, it is allowed. A step "x:SQL" is sent by Parse/Bind/Execute/
// Sync, "p:SQL|SQL" as one pipeline with one Sync, else by Query.
func TestListenGuardFollowsServer(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	for _, c := range []struct {
		steps []string
		// stopped: the server stops listening; kept: the router still
		// refuses a switch then (what it cannot attribute).
		stopped, kept bool
	}{
		{steps: []string{"x:UNLISTEN *"}, stopped: true},
		// With another node's tenant selected: it runs where the server listens.
		{steps: []string{"SET pgtenant.tenant = 't5'", "x:UNLISTEN *", "SET pgtenant.tenant = 't4'"}, stopped: true},
		{steps: []string{"x:DISCARD ALL"}, stopped: true},
		{steps: []string{"UNLISTEN *"}, stopped: true},
		{steps: []string{"BEGIN", "UNLISTEN *", "COMMIT"}, stopped: true},
		{steps: []string{"BEGIN", "x:UNLISTEN *", "SELECT 1", "COMMIT"}, stopped: true},
		{steps: []string{"BEGIN", "SAVEPOINT s", "UNLISTEN *", "RELEASE s", "COMMIT"}, stopped: true},
		{steps: []string{"p:SELECT 1|UNLISTEN *|SELECT 2"}, stopped: true},
		{steps: []string{"BEGIN", "UNLISTEN *", "ROLLBACK"}},
		{steps: []string{"BEGIN", "UNLISTEN *", "SELECT 1/0", "COMMIT"}},
		{steps: []string{"BEGIN", "SAVEPOINT s", "UNLISTEN *", "ROLLBACK TO s", "COMMIT"}},
		{steps: []string{"BEGIN", "UNLISTEN *", "LISTEN a10ch2", "COMMIT"}},
		{steps: []string{"p:UNLISTEN *|SELECT 1/0"}},
		{steps: []string{"p:SELECT 1|DISCARD ALL"}}, // 25001 in a pipeline
		{steps: []string{"x:UNLISTEN a10other"}},
		{steps: []string{"UNLISTEN *; SELECT 1"}, stopped: true, kept: true},
		// Hostile: a DO block that listens again after UNLISTEN *; a
		// pipeline whose second statement is another tenant's.
		{steps: []string{"BEGIN", "UNLISTEN *", "DO $$ BEGIN LISTEN a10ch3; END $$", "COMMIT"}},
		{steps: []string{"p:UNLISTEN *|/* tenant: t6 */ SELECT 1 FROM whoami"}}, // 25001 fails the pipeline
	} {
		name := strings.Join(c.steps, "; ")
		t.Run(name, func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
			a := a8Client(t, s, "a10ch", nil)
			for _, st := range c.steps {
				var got string
				switch {
				case strings.HasPrefix(st, "x:"):
					a.send(&pgproto3.Parse{Query: st[2:]}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
					got = a.recv(1)
				case strings.HasPrefix(st, "p:"):
					for _, q := range strings.Split(st[2:], "|") {
						a.send(&pgproto3.Parse{Query: q}, &pgproto3.Bind{}, &pgproto3.Execute{})
					}
					a.send(&pgproto3.Sync{})
					got = a.recv(1)
				default:
					got = a.q(st)
				}
				t.Logf("%s: %s", st, got)
			}
			if got := a.q("ROLLBACK"); !strings.HasSuffix(got, "ZI") { // (a failed block ends)
				t.Fatalf("ROLLBACK: %s", got)
			}
			n := a.q("SELECT count(*) FROM pg_listening_channels()")
			if want := map[bool]string{true: "D(0) C(SELECT 1) ZI", false: "D(1) C(SELECT 1) ZI"}[c.stopped]; n != want {
				t.Fatalf("server listening: %s, want %s", n, want)
			}
			if got := a.q("SET pgtenant.tenant = 't6'"); got != "C(SET) ZI" {
				t.Fatalf("SET t6: %s", got)
			}
			got := a.q(who)
			if refused := strings.HasPrefix(got, "E(0A000:"); refused != (!c.stopped || c.kept) {
				t.Fatalf("switch to t6 (server stopped listening: %v): %s", c.stopped, got)
			}
		})
	}
}

// A hostile client against the check of a described statement moved to
// another backend, with two tenants (t2 on node A, t1 on node B): a
// pipeline with the changed statement between two that run (they run,
// it gets 0A000, what follows is skipped to Sync); the statement bound
// for the other tenant, whose shard did not change (its rows, or 0A000:
// never the other shard's shape); a Sync-less batch (Bind, Execute,
// Flush: the 0A000 comes without a Sync, the Sync then ends it); the
// backend the client described on terminated before the Bind (0A000 on
// another backend, or the server's error: never rows of the new shape),
// and the next client served.
func TestHostileDescribedMoved(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	const table = "a10_h"
	ddl2 := a10Table(t, "t2", table, "a int, b text", "1, 'x'")
	a10Table(t, "t1", table, "a int, b text", "1, 'x'")
	fe, nc := rawConn(t, s, "t2")
	holder, hnc := rawConn(t, s, "t2")
	step := func(name string, f *pgproto3.Frontend, c net.Conn, want [][]string, msgs ...pgproto3.FrontendMessage) []string {
		t.Helper()
		for _, m := range msgs {
			f.Send(m)
		}
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		got := readUntilRFQ(t, f, c)
		if want != nil && !slices.ContainsFunc(want, func(w []string) bool { return slices.Equal(got, w) }) {
			t.Fatalf("%s: got %v, want one of %v", name, got, want)
		}
		return got
	}
	sel := "SELECT a FROM " + table
	step("prepare and describe", fe, nc, [][]string{{"1", "?", "T", "1", "?", "T", "Z I"}},
		&pgproto3.Parse{Query: sel}, &pgproto3.Describe{ObjectType: 'S'},
		&pgproto3.Parse{Name: "s_ok", Query: "SELECT b FROM " + table}, &pgproto3.Describe{ObjectType: 'S', Name: "s_ok"},
		&pgproto3.Sync{})
	step("holder", holder, hnc, [][]string{{"C", "T", "D 2", "C", "Z T"}}, &pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"})
	ddl2("ALTER TABLE %s ALTER COLUMN a TYPE float4", table)
	step("pipeline", fe, nc, [][]string{{"2", "D x", "C", "E 0A000", "Z I"}},
		&pgproto3.Bind{PreparedStatement: "s_ok"}, &pgproto3.Execute{},
		&pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "s_ok"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	// (By Parse/Bind: a Query would drop the unnamed statement.)
	step("the other tenant", fe, nc, [][]string{{"1", "2", "C", "Z I"}},
		&pgproto3.Parse{Name: "s_t1", Query: "SET pgtenant.tenant = 't1'"}, &pgproto3.Bind{PreparedStatement: "s_t1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	step("bound for t1", fe, nc, [][]string{{"2", "D 1", "C", "Z I"}, {"E 0A000", "Z I"}},
		&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	step("back to t2", fe, nc, [][]string{{"C", "Z I"}}, &pgproto3.Query{String: "SET pgtenant.tenant = 't2'"})

	// Sync-less: described afresh (float4), changed back (int4).
	step("prepare again", fe, nc, [][]string{{"1", "?", "T", "Z I"}},
		&pgproto3.Parse{Query: sel}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	ddl2("ALTER TABLE %s ALTER COLUMN a TYPE int", table)
	fe.Send(&pgproto3.Bind{})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Flush{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if m, err := fe.Receive(); err != nil {
		t.Fatalf("Sync-less batch: %v", err)
	} else if e, ok := m.(*pgproto3.ErrorResponse); !ok || e.Code != "0A000" {
		t.Fatalf("Sync-less batch: %#v, want 0A000", m)
	}
	step("its Sync", fe, nc, [][]string{{"Z I"}}, &pgproto3.Sync{})

	// The backend the client described on is terminated.
	// (The Query first: it would drop the unnamed statement.)
	pid := step("its backend", fe, nc, nil, &pgproto3.Query{String: "SELECT pg_backend_pid() FROM whoami"})
	step("prepare again", fe, nc, [][]string{{"1", "?", "T", "Z I"}},
		&pgproto3.Parse{Query: sel}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
	ddl2("ALTER TABLE %s ALTER COLUMN a TYPE float4", table)
	terminate(t, strings.TrimPrefix(pid[1], "D "))
	got := step("bind after the terminate", fe, nc, nil, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("bind after the terminate: %v", got)
	if slices.ContainsFunc(got, func(m string) bool { return strings.HasPrefix(m, "D ") }) || !strings.HasPrefix(got[0], "E ") {
		t.Fatalf("bind after the terminate: %v, want an error and no rows", got)
	}
	step("holder ends", holder, hnc, [][]string{{"C", "Z I"}}, &pgproto3.Query{String: "COMMIT"})
	next, nnc := rawConn(t, s, "t2")
	step("next client", next, nnc, [][]string{{"1", "2", "D 1", "C", "Z I"}},
		&pgproto3.Parse{Query: sel}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
}

// A named statement the client described, changed by DDL (past the
// router), then bound on a backend where another client's Parse of the
// same text (the router shares a server statement per text) prepared it
// after the DDL: on a server the client's Bind gets 0A000. Before, the
// router checked a statement only when it prepared it afresh, and the
// client got rows of the new shape. Now a backend's statement keeps the
// shape a Describe of it said (pool.Conn.Prepared), compared at no cost.
func TestNamedSharedAfterDDL(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	const table = "a10_shared"
	ddl := a10Table(t, "t1", table, "a int", "1")
	x, xnc := rawConn(t, s, "t1")
	y, ync := rawConn(t, s, "t1")
	holder, hnc := rawConn(t, s, "t1")
	sel := "SELECT a FROM " + table
	runRawSteps(t, []*pgproto3.Frontend{x, y, holder}, []net.Conn{xnc, ync, hnc}, ddl, table, []rawStep{
		{name: "x describes", send: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s", Query: sel}, &pgproto3.Describe{ObjectType: 'S', Name: "s"}, &pgproto3.Sync{},
		}, want: []string{"1", "?", "T", "Z I"}},
		{name: "holder", fe: 2, send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"}},
			want: []string{"C", "T", "D 1", "C", "Z T"}},
		{name: "alter", ddl: "ALTER TABLE %s ALTER COLUMN a TYPE float4"},
		{name: "y prepares the same text", fe: 1, send: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s_y", Query: sel}, &pgproto3.Bind{PreparedStatement: "s_y"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, want: []string{"1", "2", "D 1", "C", "Z I"}},
		{name: "x binds", send: []pgproto3.FrontendMessage{
			&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, want: []string{"E 0A000", "Z I"}},
		{name: "holder ends", fe: 2, send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT"}}, want: []string{"C", "Z I"}},
	})
}

// a10Table makes table (columns cols, one row of values) in tenant's shard
// schema, past the router, drops it when the test ends, and returns the
// function that runs DDL there (shardDDL).
func a10Table(t *testing.T, tenant, table, cols, values string) func(format string, table string) {
	t.Helper()
	ddl := shardDDL(t, tenant)
	ddl("CREATE TABLE IF NOT EXISTS %s ("+cols+"); TRUNCATE %[1]s; INSERT INTO %[1]s VALUES ("+values+")", table)
	t.Cleanup(func() { ddl("DROP TABLE %s", table) })
	return ddl
}
