package router

import (
	"slices"
	"strconv"
	"testing"

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
