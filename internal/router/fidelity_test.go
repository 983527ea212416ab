package router

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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
	cfg.RuntimeParams["pgtenant.tenant_id"] = fmt.Sprintf("t%d", shard)
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

// recvUntil reads until a message of type T (or an error), and returns the
// transcript as recv does.
func recvUntil[T pgproto3.BackendMessage](r *tc) string {
	var out []string
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			r.pc.Conn().Close() // a hang fails the test instead of blocking it
		}
	}()
	defer close(done)
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return strings.Join(append(out, "CLOSED"), " ") // EOF or reset, as it comes
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			out = append(out, "E("+m.Code+":"+m.Message+")")
		case *pgproto3.DataRow:
			out = append(out, "D("+string(m.Values[0])+")")
		case *pgproto3.ParseComplete:
			out = append(out, "P")
		case *pgproto3.BindComplete:
			out = append(out, "B")
		case *pgproto3.CommandComplete:
			out = append(out, "C("+string(m.CommandTag)+")")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z"+string(m.TxStatus))
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
		if _, ok := msg.(T); ok {
			return strings.Join(out, " ")
		}
	}
}

// After an error in a pipeline ended by Flush, the server ignores
// everything up to the client's Sync and then answers ReadyForQuery; the
// router must not wait for answers in between. The backend does not stay
// active and the client is no longer counted once it leaves.
func TestFidelityPipelineErrorFlush(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		pbe := func(sql string) {
			c.fe.Send(&pgproto3.Parse{Query: sql})
			c.fe.Send(&pgproto3.Bind{})
			c.fe.Send(&pgproto3.Execute{})
		}
		pbe("select 1/(3-n) from generate_series(1,10) n")
		c.send(&pgproto3.Flush{})
		out = append(out, recvUntil[*pgproto3.ErrorResponse](c))
		pbe("select 3")
		c.send(&pgproto3.Flush{})
		pbe("select 4")
		c.send(&pgproto3.Sync{})
		out = append(out, recvUntil[*pgproto3.ReadyForQuery](c))
		out = append(out, c.q("select 5"))
		return strings.Join(out, " | ")
	})
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
		c := tcConnect(t, s, "t2")
		c.fe.Send(&pgproto3.Parse{Query: "select 1/(3-n) from generate_series(1,10) n /* fid_flush */"})
		c.fe.Send(&pgproto3.Bind{})
		c.fe.Send(&pgproto3.Execute{})
		c.send(&pgproto3.Flush{})
		recvUntil[*pgproto3.ErrorResponse](c)
		c.fe.Send(&pgproto3.Parse{Query: "select 3"})
		c.fe.Send(&pgproto3.Bind{})
		c.fe.Send(&pgproto3.Execute{})
		c.send(&pgproto3.Flush{})
		c.pc.Close(ctx(t))
		waitFor(t, mode, "the router counts no client", func() bool { return len(s.Clients()) == 0 })
		waitFor(t, mode, "no backend active in the failed pipeline", func() bool {
			var n int
			err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%fid_flush%' AND state <> 'idle' AND pid <> pg_backend_pid()", &n)
			return err == nil && n == 0
		})
	}
}

// waitFor polls cond for up to ten seconds (the router acts on a
// disconnect asynchronously) and fails t if it never holds.
func waitFor(t *testing.T, mode PoolMode, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if cond() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("%s mode: %s: not so after 10s", mode, what)
}

func pgxQueryRow(t *testing.T, dsn, sql string, dst ...any) error {
	c, err := pgx.Connect(ctx(t), dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx(t))
	return c.QueryRow(ctx(t), sql).Scan(dst...)
}

// A COPY after a failed COPY (the client streamed its data regardless, as
// pgconn does) finishes.
func TestFidelityCopyAfterFailedCopy(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		c.send(&pgproto3.Query{String: "COPY nosuchtable FROM STDIN"})
		out = append(out, c.recv(1))
		c.send(&pgproto3.CopyData{Data: []byte("x\n")}, &pgproto3.CopyDone{})
		for i := 0; i < 2; i++ {
			c.send(&pgproto3.Query{String: "COPY sink (body) FROM STDIN"})
			out = append(out, recvUntil[*pgproto3.CopyInResponse](c))
			c.send(&pgproto3.CopyData{Data: []byte("fid_copy\n")}, &pgproto3.CopyDone{})
			out = append(out, c.recv(1))
		}
		out = append(out, c.q("DELETE FROM sink WHERE body = 'fid_copy'"))
		return strings.Join(out, " | ")
	})
}

// After a backend's FATAL error the client gets it and then the connection
// closes, as from PostgreSQL.
func TestFidelityBackendFatalCloses(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		out = append(out, c.q("BEGIN"))
		got := c.q("SELECT pg_backend_pid() FROM whoami")
		pid := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(got)[0], "D("), ")")
		var ok bool
		if err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT pg_terminate_backend("+pid+")", &ok); err != nil || !ok {
			t.Fatalf("terminate %s: %v %v", pid, ok, err)
		}
		c.send(&pgproto3.Query{String: "SELECT 1 FROM whoami"})
		out = append(out, recvUntil[*pgproto3.ReadyForQuery](c))
		return strings.Join(out, " | ")
	})
}

// A client that goes away before its startup packet is complete gets no
// reply, as from PostgreSQL.
func TestFidelityEarlyClose(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", nodeA.Cluster.Port), s.Addr().String()} {
		for _, sent := range [][]byte{nil, {0, 0}, {0, 0, 0, 40, 0, 3, 0, 0}} {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			nc.Write(sent)
			nc.(*net.TCPConn).CloseWrite()
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(nc)
			nc.Close()
			if len(got) != 0 || err != nil {
				t.Errorf("%s after %v then close: got %q, %v; want nothing", addr, sent, got, err)
			}
		}
	}
}

// In transaction mode a startup search_path is ignored with a warning at
// connect; SHOW search_path shows the tenant's shard schema (pg_catalog
// without a tenant). (Session mode takes it: TestSessionStartupSearchPath.)
func TestStartupSearchPath(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, tc := range []struct{ tenant, want string }{{"t2", `shard_0002, public, pg_temp`}, {"", `pg_catalog, pg_temp`}} {
		cfg, err := pgconn.ParseConfig(routerURL(s, tc.tenant))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["search_path"] = "public"
		var notices []string
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			notices = append(notices, n.Severity+" "+n.Code+" "+n.Message)
		}
		pc, err := pgconn.ConnectConfig(ctx(t), cfg)
		if err != nil {
			t.Fatal(err)
		}
		res, err := pc.Exec(ctx(t), "SHOW search_path").ReadAll()
		pc.Close(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := string(res[0].Rows[0][0]); got != tc.want {
			t.Errorf("tenant %q: SHOW search_path = %q, want %q", tc.tenant, got, tc.want)
		}
		if len(notices) != 1 || !strings.Contains(notices[0], `WARNING 01000 startup parameter "search_path" is ignored`) {
			t.Errorf("tenant %q: notices %q, want one warning about search_path", tc.tenant, notices)
		}
	}
}

// A backend terminated while its session-mode client listens idle: the
// client gets the FATAL error at once and the connection closes.
func TestFidelityFatalWhileListening(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	f := func(c *tc) string {
		got := c.q("LISTEN fid_chan")
		got2 := c.q("SELECT pg_backend_pid() FROM whoami")
		pid := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(got2)[0], "D("), ")")
		var ok bool
		if err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT pg_terminate_backend("+pid+")", &ok); err != nil || !ok {
			t.Fatalf("terminate %s: %v %v", pid, ok, err)
		}
		return got + " | " + recvUntil[*pgproto3.ReadyForQuery](c)
	}
	want := f(tcDirect(t, 2))
	if got := f(tcConnect(t, s, "t2")); got != want {
		t.Errorf("session mode:\n got: %s\nwant: %s (PostgreSQL)", got, want)
	}
}

// A COPY FROM STDIN that the server ends part way (a bad row) fails at
// once for a client that keeps streaming (pgconn watches for the error and
// stops), and the connection goes on.
func TestFidelityCopyFailsMidway(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		c := tcConnect(t, s, "t2")
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte("not a number\n"))
			buf := []byte(strings.Repeat("1\n", 1000))
			for {
				if _, err := pw.Write(buf); err != nil {
					return // CopyFrom is done with it
				}
			}
		}()
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.pc.CopyFrom(cctx, pr, "COPY whoami (shard) FROM STDIN")
		cancel()
		pr.Close()
		if got := pgCode(err); got != "22P02" {
			t.Fatalf("%s mode: COPY with a bad first row: %v, want 22P02 while the client still streams", mode, err)
		}
		if got := c.q("SELECT count(*) FROM whoami"); got != "D(1) C(SELECT 1) ZI" {
			t.Errorf("%s mode: after the failed COPY: %s", mode, got)
		}
	}
}

// A client's Parse reaches the server when the client sent it, not at its
// Sync: statement_timeout runs from the Parse and fires while the client
// takes its time before Describe (pgx's
// TestPrepareHandlesTimeoutBetweenParseAndDescribe).
func TestFidelityTimeoutBetweenParseAndDescribe(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		out = append(out, c.q("SET statement_timeout = '100ms'"))
		c.send(&pgproto3.Parse{Name: "fid_slow", Query: "SELECT $1::varchar"})
		time.Sleep(time.Second) // ten times the timeout
		c.send(&pgproto3.Describe{ObjectType: 'S', Name: "fid_slow"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		out = append(out, c.q("RESET statement_timeout"))
		return strings.Join(out, " | ")
	})
}

// In session mode a statement the client closes is closed on the server
// once no other statement of the client shares it, as on a direct
// connection (pgx's stdlib TestConnMultiplePrepareAndDeallocate counts
// them in pg_prepared_statements).
func TestFidelitySessionCloseStatement(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	const sql = "SELECT 42 AS fid_close"
	f := func(c *tc) string {
		count := func() string {
			return c.q("SELECT count(*) FROM pg_prepared_statements WHERE statement = '" + sql + "'")
		}
		var out []string
		c.send(&pgproto3.Parse{Name: "s1", Query: sql}, &pgproto3.Parse{Name: "s2", Query: sql}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Sync{})
		out = append(out, c.recv(1), count())
		c.send(&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{})
		out = append(out, c.recv(1), count())
		return strings.Join(out, " | ")
	}
	want := f(tcDirect(t, 2))
	if got := f(tcConnect(t, s, "t2")); got != want {
		t.Errorf("session mode:\n got: %s\nwant: %s (PostgreSQL)", got, want)
	}
}
