package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Protocol fidelity: the same messages sent to PostgreSQL directly (on the
// tenant's shard schema) and through the router must get the same answers.

// tcDirect connects straight to the node holding shard, with search_path
// set to the shard's schema, as the router would set it.
func tcDirect(t *testing.T, shard int) *tc {
	t.Helper()
	node := nodeA
	if shard%2 == 1 {
		node = nodeB
	}
	cfg, err := pgconn.ParseConfig(nodeDSN(node))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = placement.SchemaName(shard)
	pc, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(ctx(t)) })
	return &tc{t: t, pc: pc, fe: pc.Frontend()}
}

// eachTarget runs f against PostgreSQL directly and through a router in
// each pool mode (tenant t2, shard 2), and fails unless every transcript
// equals the direct one.
func eachTarget(t *testing.T, f func(c *tc) string) {
	t.Helper()
	want := f(tcDirect(t, 2))
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 2}}, nil)
		if got := f(tcConnect(t, s, "t2")); got != want {
			t.Errorf("%s mode:\n got: %s\nwant: %s (PostgreSQL)", mode, got, want)
		}
	}
}

// recvErrPos is recv with each error's position, and nothing but errors,
// command tags and ReadyForQuery.
func (r *tc) recvErrPos(n int) string {
	var out []string
	for n > 0 {
		msg, err := r.fe.Receive()
		if err != nil {
			return strings.Join(append(out, "ERR:"+err.Error()), " ")
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			out = append(out, fmt.Sprintf("E(%s:%s@%d)", m.Code, m.Message, m.Position))
		case *pgproto3.CommandComplete:
			out = append(out, "C("+string(m.CommandTag)+")")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z"+string(m.TxStatus))
			n--
		}
	}
	return strings.Join(out, " ")
}

// An invalid BEGIN fails as on PostgreSQL, before anything runs: the
// statements after it are not in a transaction (and the client knows it).
func TestFidelityInvalidBegin(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		for _, q := range []string{
			"begin isolation level nonsense;",
			"BEGIN TRANSACTION READ ONLY,",
			"start transaction isolation level read",
			"begin read write, isolation level serializable not deferrable",
			"set transaction isolation level bogus",
			"rollback",
			"begin; ",
			"set transaction isolation level bogus",
			"rollback",
		} {
			c.send(&pgproto3.Query{String: q})
			out = append(out, c.recvErrPos(1))
		}
		// Extended protocol: the Parse fails.
		c.send(&pgproto3.Parse{Query: "begin isolation level nonsense"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recvErrPos(1))
		c.send(&pgproto3.Parse{Name: "b", Query: "BEGIN ISOLATION LEVEL REPEATABLE READ"}, &pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "SELECT count(*) FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recvErrPos(1))
		c.send(&pgproto3.Query{String: "rollback"})
		out = append(out, c.recvErrPos(1))
		return strings.Join(out, " | ")
	})
}

// Parse of a statement name that exists fails with 42P05, whatever its text;
// the statement stays as it was.
func TestFidelityReparseNamed(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		c.send(&pgproto3.Parse{Name: "ps", Query: "SELECT 1"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		for _, q := range []string{"SELECT 2", "SELECT 1"} {
			c.send(&pgproto3.Parse{Name: "ps", Query: q}, &pgproto3.Bind{PreparedStatement: "ps"}, &pgproto3.Execute{}, &pgproto3.Sync{})
			out = append(out, c.recv(1))
		}
		c.send(&pgproto3.Bind{PreparedStatement: "ps"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// The unnamed statement may be replaced.
		c.send(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Parse{Query: "SELECT 2"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		return strings.Join(out, " | ")
	})
}

// SQL DEALLOCATE of a statement prepared with Parse works, in the simple and
// the extended protocol; DEALLOCATE of a name that does not exist is 26000.
func TestFidelityDeallocateSQL(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		c.send(&pgproto3.Parse{Name: "ps", Query: "SELECT shard FROM whoami"}, &pgproto3.Bind{PreparedStatement: "ps"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		out = append(out, c.q("DEALLOCATE ps"), c.q("DEALLOCATE ps"))
		c.send(&pgproto3.Bind{PreparedStatement: "ps"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Parse{Name: "Ps 2", Query: "SELECT 2"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Parse{Query: `deallocate prepare "Ps 2"`}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Parse{Name: "Ps 2", Query: "SELECT 3"}, &pgproto3.Bind{PreparedStatement: "Ps 2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		out = append(out, c.q("DEALLOCATE ALL"))
		c.send(&pgproto3.Bind{PreparedStatement: "Ps 2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		return strings.Join(out, " | ")
	})
}

// After DDL, a statement deallocated (protocol Close or SQL DEALLOCATE) and
// prepared again with the same text reaches a fresh server statement.
func TestFidelityReprepareAfterDDL(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		out = append(out, c.q("DROP TABLE IF EXISTS fid_ddl; DROP TYPE IF EXISTS fid_mood; CREATE TABLE fid_ddl (a int, b int); INSERT INTO fid_ddl VALUES (1, 2); CREATE TYPE fid_mood AS ENUM ('x', 'y')"))
		run := func(name, sql string, params ...[]byte) {
			c.send(&pgproto3.Parse{Name: name, Query: sql}, &pgproto3.Describe{ObjectType: 'S', Name: name},
				&pgproto3.Bind{PreparedStatement: name, Parameters: params}, &pgproto3.Execute{}, &pgproto3.Sync{})
			out = append(out, c.recv(1))
		}
		run("ps", "SELECT * FROM fid_ddl")
		out = append(out, c.q("ALTER TABLE fid_ddl DROP COLUMN b"))
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "ps"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		run("ps", "SELECT * FROM fid_ddl")
		out = append(out, c.q("ALTER TABLE fid_ddl ADD COLUMN c text DEFAULT 'c'"))
		out = append(out, c.q("DEALLOCATE ps"))
		run("ps", "SELECT * FROM fid_ddl")

		run("pt", "SELECT $1::fid_mood::text", []byte("x"))
		out = append(out, c.q("DROP TYPE fid_mood; CREATE TYPE fid_mood AS ENUM ('y', 'x')"))
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "pt"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		run("pt", "SELECT $1::fid_mood::text", []byte("x"))
		out = append(out, c.q("DEALLOCATE pt"), c.q("DROP TABLE fid_ddl; DROP TYPE fid_mood"))
		return strings.Join(out, " | ")
	})
}
