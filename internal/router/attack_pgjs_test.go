package router

import (
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// postgres.js's transactions: sql.begin sends BEGIN as a simple Query,
// then pipelines each statement as Parse, Describe (statement), Bind,
// Execute, with one Sync after the last. The router defers the BEGIN until
// a statement names the tenant, and described statements of a deferred
// transaction on a backend of its own (shard 0's schema), so that the
// Describe does not open the transaction for the session's tenant before a
// SET LOCAL could choose another. The Bind for the session's tenant that
// followed in the same pipeline then met that backend, still waiting for a
// Sync: "this pipeline is bound to tenant \"\x00describe\"" (25001), and
// every statement of every postgres.js transaction failed; and a table
// only in the tenant's shard was described in shard 0's schema. A
// statement that runs for a known tenant is described on that tenant's
// backend, in its transaction (in session mode too, where a backend stayed
// attached and got the Parse before the deferred BEGIN).
func TestPgjsTransactionPipeline(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			// DDLAllow: the table's CREATE and DROP are compared message
			// by message, without the schema-change WARNING (ddl_test.go).
			s := startRouter(t, Config{PoolMode: mode, DDL: DDLAllow}, nil)
			table := "pgjs_only_" + string(mode)
			// Another client makes the table: this one starts with BEGIN,
			// with no backend (in session mode too).
			fe0, nc0 := rawConn(t, s, "t1")
			fe0.Send(&pgproto3.Query{String: "CREATE TABLE " + table + " (a int); INSERT INTO " + table + " VALUES (7)"})
			if err := fe0.Flush(); err != nil {
				t.Fatal(err)
			}
			if got, want := readUntilRFQ(t, fe0, nc0), []string{"C", "C", "Z I"}; !slices.Equal(got, want) {
				t.Fatalf("create the table: got %v, want %v", got, want)
			}
			defer func() {
				fe0.Send(&pgproto3.Query{String: "DROP TABLE " + table})
				fe0.Flush()
				if got, want := readUntilRFQ(t, fe0, nc0), []string{"C", "Z I"}; !slices.Equal(got, want) {
					t.Errorf("drop the table: got %v, want %v", got, want)
				}
			}()
			fe, nc := rawConn(t, s, "t1")
			steps := []struct {
				send []pgproto3.FrontendMessage
				want []string
				// noParseComplete: ParseComplete is not compared (the
				// router may answer a Parse of a deferred transaction
				// itself, before the server's error).
				noParseComplete bool
			}{
				{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN"}}, want: []string{"C", "Z T"}},
				{send: []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "pgjs1", Query: "SELECT a FROM " + table},
					&pgproto3.Describe{ObjectType: 'S', Name: "pgjs1"},
					&pgproto3.Bind{PreparedStatement: "pgjs1"},
					&pgproto3.Execute{},
					&pgproto3.Parse{Name: "pgjs2", Query: "SELECT shard FROM whoami"},
					&pgproto3.Describe{ObjectType: 'S', Name: "pgjs2"},
					&pgproto3.Bind{PreparedStatement: "pgjs2"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				},
					// "?": ParameterDescription.
					want: []string{"1", "?", "T", "2", "D 7", "C", "1", "?", "T", "2", "D " + strconv.Itoa(shardOf("t1")), "C", "Z T"}},
				{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT"}}, want: []string{"C", "Z I"}},
				{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT shard FROM whoami"}}, want: []string{"T", "D " + strconv.Itoa(shardOf("t1")), "C", "Z I"}},
				// A statement that fails to parse fails the transaction;
				// in session mode the backend stayed attached, and its
				// Parse and Describe went ahead of the deferred BEGIN: the
				// client saw 26000 for the Bind too, and ReadyForQuery I.
				{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "BEGIN"}}, want: []string{"C", "Z T"}},
				{send: []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "pgjs3", Query: "SELECT wat"},
					&pgproto3.Describe{ObjectType: 'S', Name: "pgjs3"},
					&pgproto3.Bind{PreparedStatement: "pgjs3"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"E 42703", "Z E"}, noParseComplete: true},
				{send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "ROLLBACK"}}, want: []string{"C", "Z I"}},
			}
			for i, st := range steps {
				for _, m := range st.send {
					fe.Send(m)
				}
				if err := fe.Flush(); err != nil {
					t.Fatal(err)
				}
				got := readUntilRFQ(t, fe, nc)
				if st.noParseComplete {
					got = slices.DeleteFunc(got, func(m string) bool { return m == "1" })
				}
				if !slices.Equal(got, st.want) {
					t.Fatalf("step %d: got %v, want %v", i, got, st.want)
				}
			}
		})
	}
}

// postgres.js's listen() sends LISTEN as Parse, Describe, Bind, Execute,
// Sync. In transaction mode the router refused LISTEN only as a simple
// Query: over the extended protocol it ran on a pooled backend, which went
// back to the pool listening (for the next clients), and the client, told
// "LISTEN", never heard a notification (the suite's listen tests timed
// out). It is refused as in a simple Query, before reaching a backend.
func TestPgjsListenExtendedTransactionMode(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	fe, nc := rawConn(t, s, "t1")
	fe.Send(&pgproto3.Parse{Name: "pgjs_listen", Query: `listen "test"`})
	fe.Send(&pgproto3.Describe{ObjectType: 'S', Name: "pgjs_listen"})
	fe.Send(&pgproto3.Bind{PreparedStatement: "pgjs_listen"})
	fe.Send(&pgproto3.Execute{})
	fe.Send(&pgproto3.Sync{})
	fe.Send(&pgproto3.Query{String: "SELECT count(*) FROM pg_listening_channels()"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, want := range [][]string{{"E 0A000", "Z I"}, {"T", "D 0", "C", "Z I"}} {
		if got := readUntilRFQ(t, fe, nc); !slices.Equal(got, want) {
			t.Fatalf("answer %d: got %v, want %v", i, got, want)
		}
	}
}

// pgjsQuery is postgres.js's first run of a statement without parameters:
// Parse, Describe, Bind, Execute, Sync in one write.
func pgjsQuery(name, query string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: name, Query: query},
		&pgproto3.Describe{ObjectType: 'S', Name: name},
		&pgproto3.Bind{PreparedStatement: name},
		&pgproto3.Execute{},
		&pgproto3.Sync{},
	}
}

// postgres.js's suite makes and drops a table "test" in test after test,
// with other column types, and reads it with the same texts ("select x
// from test") from new clients and old. In transaction mode a backend
// keeps the router's statement for a text across clients: a client's
// fresh Parse of the text after the table was made again reached the
// statement another client had prepared before, and its Describe got
// 0A000 "cached plan must not change result type", which a server never
// sends for a fresh Parse ("Point type array", "bytea serializes and
// parses", "Copy from file"). The same for postgres.js's own retry after
// an error, a fresh Parse under a new name: after ALTER TABLE the insert
// of "Recreate prepared statements on transformAssignedExpr error" failed
// again with 42804 on the old statement. A schema change sent through the
// router makes every later Parse reach a statement of its own; a
// statement parsed before it stays as it was, as on a server.
func TestPgjsFreshParseAfterDDL(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			// DDLAllow: no schema-change WARNING among the answers.
			s := startRouter(t, Config{PoolMode: mode, DDL: DDLAllow}, nil)
			table := "pgjs_fresh_" + string(mode)
			a, anc := rawConn(t, s, "t1")
			b, bnc := rawConn(t, s, "t1")
			sel := "select x from " + table
			ins := "insert into " + table + " (x) values ($1) returning x"
			q := func(sql string) []pgproto3.FrontendMessage {
				return []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}
			}
			runRawSteps(t, []*pgproto3.Frontend{a, b}, []net.Conn{anc, bnc}, nil, "", []rawStep{
				{name: "create", send: q("create table " + table + " (x int); insert into " + table + " values (1)"), want: []string{"C", "C", "Z I"}},
				{name: "a reads", send: pgjsQuery("a1", sel), want: []string{"1", "?", "T", "2", "D 1", "C", "Z I"}},
				{name: "made again", send: q("drop table " + table + "; create table " + table + " (x text); insert into " + table + " values ('v')"), want: []string{"C", "C", "C", "Z I"}},
				// Another client's first Parse of the text: a fresh
				// statement, as on a server.
				{name: "b reads", fe: 1, send: pgjsQuery("b1", sel), want: []string{"1", "?", "T", "2", "D v", "C", "Z I"}},
				// The client's own statement, described before: stale.
				{name: "a reads again", send: []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "a1"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"E 0A000", "Z I"}},
				// Its fresh Parse under a new name (postgres.js's retry).
				{name: "a prepares again", send: pgjsQuery("a3", sel), want: []string{"1", "?", "T", "2", "D v", "C", "Z I"}},
				// A parameter of type text (the column's).
				{name: "a inserts", send: []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "a2", Query: ins},
					&pgproto3.Describe{ObjectType: 'S', Name: "a2"},
					&pgproto3.Bind{PreparedStatement: "a2", Parameters: [][]byte{[]byte("w")}},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"1", "?", "T", "2", "D w", "C", "Z I"}},
				{name: "alter", send: q("alter table " + table + " alter column x type int using length(x)"), want: []string{"C", "Z I"}},
				{name: "b inserts", fe: 1, send: []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "b2", Query: ins},
					&pgproto3.Describe{ObjectType: 'S', Name: "b2"},
					&pgproto3.Bind{PreparedStatement: "b2", Parameters: [][]byte{[]byte("5")}},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"1", "?", "T", "2", "D 5", "C", "Z I"}},
				{name: "drop", send: q("drop table " + table), want: []string{"C", "Z I"}},
			})
		})
	}
}

// The rows of "Insert array with null" and "Supports fragments as dynamic
// parameters" reached postgres.js for a statement it held no description
// of ("reading 'length'" of its columns). A Describe of a statement shared
// by text, made stale by DDL, answers ParameterDescription and then 0A000;
// postgres.js takes the statement as prepared at the first, and binds it
// later without describing it again. The server would refuse that Bind
// with 0A000 too (the statement stays stale), and postgres.js prepares
// the statement again (the error's routine, RevalidateCachedQuery). The
// router prepared it afresh on whichever backend the Bind landed on, saw
// no description to compare with, and relayed the rows. A statement the
// server found stale after telling the client of it (here its parameters)
// stays stale for the client, as on a server.
//
// The schema change is made on the node, past the router, which learns of
// it only from the server's error (TestPgjsFreshParseAfterDDL: one sent
// through the router gives later Parses statements of their own). A third
// client holding the first backend in a transaction makes the Bind land on
// another backend.
func TestPgjsRowsWithoutDescription(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	table := "pgjs_nodesc"
	ddl := shardDDL(t, "t1")
	ddl("CREATE TABLE %s (x int); INSERT INTO %[1]s VALUES (1)", table)
	defer ddl("DROP TABLE %s", table)
	a, anc := rawConn(t, s, "t1")
	b, bnc := rawConn(t, s, "t1")
	holder, hnc := rawConn(t, s, "t1")
	sel := "select x from " + table
	bind := func(name string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{}}
	}
	runRawSteps(t, []*pgproto3.Frontend{a, b, holder}, []net.Conn{anc, bnc, hnc}, ddl, table, []rawStep{
		{name: "a reads", send: pgjsQuery("a1", sel), want: []string{"1", "?", "T", "2", "D 1", "C", "Z I"}},
		{name: "made again", ddl: "DROP TABLE %[1]s; CREATE TABLE %[1]s (x text); INSERT INTO %[1]s VALUES ('v')"},
		// The statement a1 left on the backend: a server would describe a
		// fresh Parse, but the router does not know of the DDL yet.
		{name: "b describes", fe: 1, send: pgjsQuery("b1", sel), want: []string{"1", "?", "E 0A000", "Z I"}},
		{name: "holder takes the backend", fe: 2, send: []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"},
		}, want: []string{"C", "T", "D 1", "C", "Z T"}},
		// Rows without a description before: "2", "D v", "C".
		{name: "b binds", fe: 1, send: bind("b1"), want: []string{"E 0A000", "Z I"}},
		{name: "b binds again", fe: 1, send: bind("b1"), want: []string{"E 0A000", "Z I"}},
		// postgres.js's retry: a fresh Parse reaches a fresh statement.
		{name: "b prepares again", fe: 1, send: pgjsQuery("b2", sel), want: []string{"1", "?", "T", "2", "D v", "C", "Z I"}},
		{name: "holder ends", fe: 2, send: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COMMIT"}}, want: []string{"C", "Z I"}},
		// And on the first backend too (its stale statement was left).
		{name: "a prepares again", send: pgjsQuery("a2", sel), want: []string{"1", "?", "T", "2", "D v", "C", "Z I"}},
	})
	// The router's 0A000 names the server's routine: postgres.js prepares
	// the statement again only on it.
	for _, m := range bind("b1") {
		b.Send(m)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	bnc.SetReadDeadline(time.Now().Add(5 * time.Second))
	m, err := b.Receive()
	if e, ok := m.(*pgproto3.ErrorResponse); !ok || e.Code != "0A000" || e.Routine != "RevalidateCachedQuery" {
		t.Fatalf("b binds once more: got %#v (%v), want 0A000 from RevalidateCachedQuery", m, err)
	}
}

// The unnamed statement: the router skips a client's Parse of the text it
// parsed last on its backend, but another client's schema change made the
// server's copy stale, and the fresh Parse got 0A000 at its Describe (a
// server parses it afresh). After a schema change the router sees, the
// unnamed statement is parsed again (postgres.js with prepare: false,
// pgx's exec modes). In session mode, where the client keeps its backend
// (in transaction mode the next transaction's setup Query drops the
// backend's unnamed statement anyway).
func TestPgjsFreshUnnamedParseAfterDDL(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, DDL: DDLAllow}, nil)
	table := "pgjs_unnamed"
	a, anc := rawConn(t, s, "t1")
	b, bnc := rawConn(t, s, "t1")
	q := func(sql string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Query{String: sql}}
	}
	sel := "select x from " + table
	runRawSteps(t, []*pgproto3.Frontend{a, b}, []net.Conn{anc, bnc}, nil, "", []rawStep{
		{name: "create", fe: 1, send: q("create table " + table + " (x int); insert into " + table + " values (1)"), want: []string{"C", "C", "Z I"}},
		{name: "a reads", send: pgjsQuery("", sel), want: []string{"1", "?", "T", "2", "D 1", "C", "Z I"}},
		{name: "made again", fe: 1, send: q("drop table " + table + "; create table " + table + " (x text); insert into " + table + " values ('v')"), want: []string{"C", "C", "C", "Z I"}},
		{name: "a reads again", send: pgjsQuery("", sel), want: []string{"1", "?", "T", "2", "D v", "C", "Z I"}},
		{name: "drop", fe: 1, send: q("drop table " + table), want: []string{"C", "Z I"}},
	})
}
