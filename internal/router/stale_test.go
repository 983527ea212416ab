package router

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// A client Parses and Describes a named statement (it holds the
// RowDescription), DDL changes a table the statement reads, and the client
// binds the statement again. On a direct connection the Bind fails with
// 0A000 "cached plan must not change result type" and drivers prepare the
// statement again. In transaction mode the router prepared the statement
// afresh on whatever backend the next transaction landed on: the fresh
// Parse got the new shape and the rows came back in it, with no error, to
// a client decoding them with the old description (postgres.js's suite:
// wrong values, a RangeError). The router checks the shape of a statement
// it prepares afresh against what the client was told, and refuses the
// Bind as the server would. In session mode the backend is the client's
// own and the server answers the same.
//
// Another backend is forced by a second client holding the first one in
// a transaction (in session mode it has a backend of its own anyway).
func TestStaleStatementAfterDDL(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			table := "stale_" + string(mode)
			ddl := shardDDL(t, "t1")
			ddl("CREATE TABLE %s (a int, b text); INSERT INTO %[1]s VALUES (1, 'x')", table)
			defer ddl("DROP TABLE %s", table)

			undescribed := []string{"2", "D changed:1", "C", "Z I"}
			if mode == PoolSession {
				undescribed = []string{"E 0A000", "Z I"} // the server's own check
			}
			fe, nc := rawConn(t, s, "t1")
			holder, hnc := rawConn(t, s, "t1")
			runRawSteps(t, []*pgproto3.Frontend{fe, holder}, []net.Conn{nc, hnc}, ddl, table, []rawStep{
				{name: "prepare and describe", send: []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "s_ab", Query: "SELECT a, b FROM " + table},
					&pgproto3.Describe{ObjectType: 'S', Name: "s_ab"},
					&pgproto3.Parse{Name: "s_b", Query: "SELECT b FROM " + table},
					&pgproto3.Describe{ObjectType: 'S', Name: "s_b"},
					&pgproto3.Parse{Name: "s_undescribed", Query: "SELECT a FROM " + table},
					&pgproto3.Sync{},
				}, want: []string{"1", "?", "T", "1", "?", "T", "1", "Z I"}},
				{name: "holder takes the backend", fe: 1, send: []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"},
				}, want: []string{"C", "T", "D 1", "C", "Z T"}},
				{name: "alter", ddl: "ALTER TABLE %s ALTER COLUMN a TYPE text USING 'changed:' || a"},
				// The shape the client saw is unchanged: no error, nothing
				// more than the server's answers.
				{name: "unchanged shape", send: []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "s_b"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"2", "D x", "C", "Z I"}},
				// Never described: the client learns the shape from the
				// rows (in transaction mode nothing is checked; a server
				// refuses it, as in session mode).
				{name: "never described", send: []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "s_undescribed"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: undescribed},
				// A Describe of it: the server sends the statement's
				// ParameterDescription, then the error (its result is
				// what it cannot describe); drivers take the statement as
				// prepared at the first and bind it again (postgres.js).
				{name: "describe changed shape", send: []pgproto3.FrontendMessage{
					&pgproto3.Describe{ObjectType: 'S', Name: "s_ab"},
					&pgproto3.Sync{},
				}, want: []string{"?", "E 0A000", "Z I"}},
				// In a pipeline: what came before runs, what follows is
				// skipped until Sync.
				{name: "changed shape", send: []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "s_b"},
					&pgproto3.Execute{},
					&pgproto3.Bind{PreparedStatement: "s_ab"},
					&pgproto3.Execute{},
					&pgproto3.Bind{PreparedStatement: "s_b"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"2", "D x", "C", "E 0A000", "Z I"}},
				{name: "changed shape again", send: []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "s_ab"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"E 0A000", "Z I"}},
				{name: "describe changed shape again", send: []pgproto3.FrontendMessage{
					&pgproto3.Describe{ObjectType: 'S', Name: "s_ab"},
					&pgproto3.Sync{},
				}, want: []string{"?", "E 0A000", "Z I"}},
				// In a transaction block the transaction is aborted.
				{name: "changed shape in a transaction", send: []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "BEGIN"},
					&pgproto3.Parse{Query: "SELECT 1 FROM whoami"},
					&pgproto3.Bind{},
					&pgproto3.Execute{},
					&pgproto3.Bind{PreparedStatement: "s_ab"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"C", "Z T", "1", "2", "D 1", "C", "E 0A000", "Z E"}},
				{name: "rollback", send: []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "ROLLBACK"},
				}, want: []string{"C", "Z I"}},
				// Prepared again by the client: the new shape.
				{name: "prepared again", send: []pgproto3.FrontendMessage{
					&pgproto3.Close{ObjectType: 'S', Name: "s_ab"},
					&pgproto3.Parse{Name: "s_ab", Query: "SELECT a, b FROM " + table},
					&pgproto3.Describe{ObjectType: 'S', Name: "s_ab"},
					&pgproto3.Bind{PreparedStatement: "s_ab"},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, want: []string{"3", "1", "?", "T", "2", "D changed:1", "C", "Z I"}},
				{name: "holder ends", fe: 1, send: []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "COMMIT"},
				}, want: []string{"C", "Z I"}},
			})
		})
	}
}

// rawStep is one exchange of a raw client: its messages (or, with ddl,
// a statement run on the tenant's shard directly, past the router) and the
// answers wanted up to ReadyForQuery, in readUntilRFQ's short form.
type rawStep struct {
	name string
	fe   int // which client: an index into the test's clients
	send []pgproto3.FrontendMessage
	ddl  string
	want []string
}

// runRawSteps runs steps on clients (raw connections through the router)
// and fails t at the first answer that differs.
func runRawSteps(t *testing.T, clients []*pgproto3.Frontend, conns []net.Conn, ddl func(string, string), table string, steps []rawStep) {
	t.Helper()
	for _, st := range steps {
		if st.ddl != "" {
			ddl(st.ddl, table)
			continue
		}
		fe, nc := clients[st.fe], conns[st.fe]
		for _, m := range st.send {
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for len(got) == 0 || readies(got) < readies(st.want) {
			got = append(got, readUntilRFQ(t, fe, nc)...)
		}
		if !slices.Equal(got, st.want) {
			t.Fatalf("%s: got %v, want %v", st.name, got, st.want)
		}
	}
}

// readies counts the ReadyForQuery messages in a readUntilRFQ answer.
func readies(msgs []string) int {
	n := 0
	for _, m := range msgs {
		if len(m) > 0 && m[0] == 'Z' {
			n++
		}
	}
	return n
}

// shardDDL returns a function that runs a statement (a format with the
// table name as its argument) in tenant's shard schema on its node,
// directly, not through the router.
func shardDDL(t *testing.T, tenant string) func(format string, table string) {
	t.Helper()
	sh := shardOf(tenant)
	node := []*pgtest.Server{nodeA, nodeB}[sh%2]
	return func(format, table string) {
		t.Helper()
		c, err := pgx.Connect(context.Background(), nodeDSN(node))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		q := fmt.Sprintf(format, pgx.Identifier{placement.SchemaName(sh), table}.Sanitize())
		if _, err := c.Exec(context.Background(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// The shape compared is the columns' names, types and formats, not the
// table and column numbers they come from.
func TestRowShapeHash(t *testing.T) {
	desc := func(name string, table uint32, attnum uint16, typ uint32, mod int32) []byte {
		b := binary.BigEndian.AppendUint16(nil, 1)
		b = append(append(b, name...), 0)
		b = binary.BigEndian.AppendUint32(b, table)
		b = binary.BigEndian.AppendUint16(b, attnum)
		b = binary.BigEndian.AppendUint32(b, typ)
		b = binary.BigEndian.AppendUint16(b, 4)
		b = binary.BigEndian.AppendUint32(b, uint32(mod))
		return binary.BigEndian.AppendUint16(b, 0)
	}
	base := rowShapeHash(fnvOffset, desc("a", 16384, 1, 23, -1))
	for _, c := range []struct {
		name string
		body []byte
		same bool
	}{
		{"the table made again", desc("a", 16999, 3, 23, -1), true},
		{"another type", desc("a", 16384, 1, 20, -1), false},
		{"another modifier", desc("a", 16384, 1, 23, 8), false},
		{"another name", desc("b", 16384, 1, 23, -1), false},
		{"no columns", []byte{0, 0}, false},
		{"malformed", []byte{0, 1, 'a'}, false},
	} {
		if got := rowShapeHash(fnvOffset, c.body) == base; got != c.same {
			t.Errorf("%s: same shape %v, want %v", c.name, got, c.same)
		}
	}
}

// pgx caches a statement and its description; after a 0A000 it forgets
// them and prepares the statement again, as on a direct connection.
func TestStaleStatementPgx(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	ddl := shardDDL(t, "t1")
	ddl("CREATE TABLE %s (a int); INSERT INTO %[1]s VALUES (1)", "stale_pgx")
	defer ddl("DROP TABLE %s", "stale_pgx")
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	var n int
	if err := c.QueryRow(ctx(t), "SELECT a FROM stale_pgx").Scan(&n); err != nil || n != 1 {
		t.Fatalf("before: %v, %v", n, err)
	}
	holder, hnc := rawConn(t, s, "t1") // takes the backend the statement is on
	holder.Send(&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"})
	if err := holder.Flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := readUntilRFQ(t, holder, hnc), []string{"C", "T", "D 1", "C", "Z T"}; !slices.Equal(got, want) {
		t.Fatalf("holder: got %v, want %v", got, want)
	}
	ddl("ALTER TABLE %s ALTER COLUMN a TYPE text USING 'v' || a", "stale_pgx")
	var v any
	err := c.QueryRow(ctx(t), "SELECT a FROM stale_pgx").Scan(&v)
	if got, want := pgCode(err), "0A000"; got != want {
		t.Fatalf("after the DDL: got %v (%v), want %s", v, err, want)
	}
	if err := c.QueryRow(ctx(t), "SELECT a FROM stale_pgx").Scan(&v); err != nil || v != "v1" {
		t.Fatalf("prepared again: got %v, %v; want v1", v, err)
	}
}

// TestStaleBeforeCountedChange: a server's stale answer for a statement
// parsed before a schema change the router counted since does not count
// another (every session's shared names were dropped then already); one
// for a statement of the current generation does (a change the router
// missed).
func TestStaleBeforeCountedChange(t *testing.T) {
	s := &Server{stmtIDs: map[string]string{"SELECT 1": "pgtenant_1"}}
	ss := &session{srv: s}
	old := &stmtDef{gen: s.stmtGen.Load()}
	s.schemaChanged()
	s.stmtIDs["SELECT 2"] = "pgtenant_2"
	ss.serverFoundStale(&expect{stmt: old})
	if g := s.stmtGen.Load(); g != 1 || len(s.stmtIDs) != 1 {
		t.Errorf("stale statement of generation 0 at 1: stmtGen %d, %d names kept; want 1, 1", g, len(s.stmtIDs))
	}
	ss.serverFoundStale(&expect{stmt: &stmtDef{gen: 1}})
	if g := s.stmtGen.Load(); g != 2 || len(s.stmtIDs) != 0 {
		t.Errorf("stale statement of the current generation: stmtGen %d, %d names kept; want 2, 0", g, len(s.stmtIDs))
	}
}
