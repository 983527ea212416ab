package router

// Protocol cases found in review: pipelines that fail half way, SETs
// that the server undoes, statements the server skipped. Each test reads
// the answers as a compact transcript (see tc.recv).

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
)

type tc struct {
	t  *testing.T
	pc *pgconn.PgConn
	fe *pgproto3.Frontend
}

func tcConnect(t *testing.T, s *Server, tenant string) *tc {
	pc, err := pgconn.Connect(ctx(t), routerURL(s, tenant))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(ctx(t)) })
	return &tc{t: t, pc: pc, fe: pc.Frontend()}
}

func (r *tc) send(msgs ...pgproto3.FrontendMessage) {
	for _, m := range msgs {
		r.fe.Send(m)
	}
	if err := r.fe.Flush(); err != nil {
		r.t.Fatal(err)
	}
}

// recv reads up to n ReadyForQuery and returns a compact transcript.
func (r *tc) recv(n int) string {
	var out []string
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			r.pc.Conn().Close()
		}
	}()
	defer close(done)
	for n > 0 {
		msg, err := r.fe.Receive()
		if err != nil {
			out = append(out, "ERR:"+err.Error())
			return strings.Join(out, " ")
		}
		switch m := msg.(type) {
		case *pgproto3.ParseComplete:
			out = append(out, "P")
		case *pgproto3.BindComplete:
			out = append(out, "B")
		case *pgproto3.DataRow:
			var v []string
			for _, x := range m.Values {
				v = append(v, string(x))
			}
			out = append(out, "D("+strings.Join(v, ",")+")")
		case *pgproto3.CommandComplete:
			out = append(out, "C("+string(m.CommandTag)+")")
		case *pgproto3.ErrorResponse:
			out = append(out, "E("+m.Code+":"+m.Message+")")
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z"+string(m.TxStatus))
			n--
		case *pgproto3.ParameterStatus:
			out = append(out, "S("+m.Name+"="+m.Value+")")
		case *pgproto3.NoticeResponse:
		case *pgproto3.RowDescription, *pgproto3.NoData, *pgproto3.ParameterDescription:
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
	}
	return strings.Join(out, " ")
}

func (r *tc) q(sql string) string {
	r.send(&pgproto3.Query{String: sql})
	return r.recv(1)
}

// A Parse that the server skips (an earlier message of the pipeline
// failed) must not be recorded as prepared on the backend.
func TestSkippedParse(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t3")
	c.send(&pgproto3.Parse{Name: "bad", Query: "SELEC 1"},
		&pgproto3.Parse{Name: "good", Query: "SELECT shard FROM whoami"},
		&pgproto3.Sync{})
	t.Logf("first pipeline: %s", c.recv(1))
	// As on a server: "good" does not exist; prepare it again and run it.
	c.send(&pgproto3.Parse{Name: "good", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "good"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := c.recv(1)
	if got != "P B D(3) C(SELECT 1) ZI" {
		t.Fatalf("re-prepare and run: %s", got)
	}
	// Another client, same text, same (only) backend.
	d := tcConnect(t, s, "t3")
	d.send(&pgproto3.Parse{Name: "x", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "x"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := d.recv(1); got != "P B D(3) C(SELECT 1) ZI" {
		t.Fatalf("other client: %s", got)
	}
}

// Same, with an injected (swallowed) Parse behind a failing Execute: this
// path predates parseNow.
func TestSkippedInjectedParse(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c2 := tcConnect(t, s, "")
	c2.send(&pgproto3.Parse{Name: "a", Query: "SELECT 1/0 FROM whoami"},
		&pgproto3.Parse{Name: "b", Query: "SELECT shard FROM whoami"},
		&pgproto3.Sync{})
	t.Logf("parses: %s", c2.recv(1))
	t.Log(c2.q("SET pgtenant.tenant = 't3'"))
	c2.send(&pgproto3.Bind{PreparedStatement: "a"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Logf("pipeline: %s", c2.recv(1))
	c2.send(&pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := c2.recv(1); got != "B D(3) C(SELECT 1) ZI" {
		t.Fatalf("b after the failed pipeline: %s", got)
	}
}

// Order of answers when the router refuses a Bind behind a Parse it
// answers itself: ParseComplete must come before the error.
func TestLocalErrorOrder(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "")
	c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := c.recv(1); !strings.HasPrefix(got, "P E(") {
		t.Fatalf("Parse, Bind without a tenant: %s, want P E(3D000) ZI", got)
	}
}

// A session SET inside a transaction that rolls back is undone by the
// server; the router must agree on every backend.
func TestSetRolledBack(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"))
	t.Log(c.q("SET statement_timeout = '1234ms'"))
	t.Log(c.q("ROLLBACK"))
	a := c.q("SELECT current_setting('statement_timeout') FROM whoami")                  // t2: node a
	b := c.q("/* tenant: t3 */ SELECT current_setting('statement_timeout') FROM whoami") // t3: node b
	if a != b {
		t.Fatalf("after ROLLBACK of a SET: node a %q, node b %q (server says 0)", a, b)
	}
}

// Same for a SET in an extended-protocol pipeline whose implicit
// transaction fails after it.
func TestSetPipelineFails(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Parse{Query: "SET statement_timeout = '1234ms'"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	t.Log(c.recv(1))
	a := c.q("SELECT current_setting('statement_timeout') FROM whoami")
	b := c.q("/* tenant: t3 */ SELECT current_setting('statement_timeout') FROM whoami")
	if a != b {
		t.Fatalf("after a failed pipeline with a SET: node a %q, node b %q (server says 0)", a, b)
	}
}

// A SET bound to a portal that is replaced before Execute never runs.
func TestPortalSetReplaced(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Parse{Name: "set", Query: "SET statement_timeout = '999ms'"},
		&pgproto3.Parse{Name: "sel", Query: "SELECT 1"},
		&pgproto3.Bind{PreparedStatement: "set"},
		&pgproto3.Bind{PreparedStatement: "sel"},
		&pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	b := c.q("/* tenant: t3 */ SELECT current_setting('statement_timeout') FROM whoami")
	if !strings.Contains(b, "D(0)") {
		t.Fatalf("statement_timeout on node b: %s, want 0 (the SET never ran)", b)
	}
}

// DEALLOCATE ALL over the extended protocol drops the router's prepared
// BEGIN too.
func TestDeallocateExtended(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("BEGIN"), c.q("SELECT 1 FROM whoami"), c.q("COMMIT")) // prepares pgtenant_begin
	c.send(&pgproto3.Parse{Query: "DEALLOCATE ALL"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	d := tcConnect(t, s, "t2")
	d.q("BEGIN")
	if got := d.q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZT" {
		t.Fatalf("BEGIN; SELECT after another client's DEALLOCATE ALL: %s", got)
	}
	d.q("COMMIT")
}

// A statement in a transaction whose backend was cut by a fence gets the
// retryable 40001, whether it comes as a simple Query or as Parse/Bind/
// Execute (the Parse is what meets the cut there).
func TestStatementAfterCut(t *testing.T) {
	for _, extended := range []bool{false, true} {
		t.Run(fmt.Sprintf("extended=%v", extended), func(t *testing.T) {
			s := startRouter(t, Config{FenceGrace: 100 * time.Millisecond, HoldTimeout: 2 * time.Second}, nil)
			c := tcConnect(t, s, "t3")
			t.Log(c.q("BEGIN"), c.q("SELECT 1 FROM whoami"))
			fenced := cloneMap(testMap())
			fenced.Version = 2
			fenced.Shards[3].State = placement.StateFenced
			if err := s.SetMap(ctx(t), fenced); err != nil {
				t.Fatal(err)
			}
			time.Sleep(300 * time.Millisecond) // past FenceGrace: the transaction is cut
			var got string
			if extended {
				c.send(&pgproto3.Parse{Name: "s", Query: "SELECT 2 FROM whoami"}, &pgproto3.Bind{PreparedStatement: "s"},
					&pgproto3.Execute{}, &pgproto3.Sync{})
				got = c.recv(1)
			} else {
				got = c.q("SELECT 2 FROM whoami")
			}
			if !strings.Contains(got, "E(40001") {
				t.Fatalf("statement in a cut transaction: %s, want 40001", got)
			}
		})
	}
}

// A client that sends its next Query while the router waits on the
// backend for the previous one (pipelining, e.g. libpq/pgx pipeline mode).
func TestPipelinedQueryArrivesEarly(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Query{String: "SELECT 1 FROM whoami, pg_sleep(0.3)"})
	time.Sleep(100 * time.Millisecond) // the router is draining the backend now
	c.send(&pgproto3.Query{String: "SELECT 2 FROM whoami"})
	if got := c.recv(2); got != "D(1) C(SELECT 1) ZI D(2) C(SELECT 1) ZI" {
		t.Fatalf("two pipelined queries: %s", got)
	}
}

// A COPY whose first row fails: the server answers Error+RFQ while the
// router still relays the client's data; the CopyDone that follows gets
// no answer.
func TestCopyErrorEarly(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Query{String: "COPY sink (id, body) FROM STDIN"})
	time.Sleep(100 * time.Millisecond)
	c.send(&pgproto3.CopyData{Data: []byte("notanint\tx\n")})
	time.Sleep(200 * time.Millisecond) // the server's error arrives at the router
	c.send(&pgproto3.CopyData{Data: []byte("5\ty\n")}, &pgproto3.CopyDone{})
	got := c.recv(1)
	if !strings.Contains(got, "E(22P02") || !strings.HasSuffix(got, "ZI") {
		t.Fatalf("COPY with a bad first row: %s", got)
	}
}

// After DEALLOCATE ALL over the extended protocol, a client that pipelines
// BEGIN and two statements (simple Query messages in one write).
func TestBeginFailsPipelined(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			c := tcConnect(t, s, "t2")
			t.Log(c.q("BEGIN"), c.q("SELECT 1 FROM whoami"), c.q("COMMIT")) // prepares pgtenant_begin
			c.send(&pgproto3.Parse{Query: "DEALLOCATE ALL"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			t.Log(c.recv(1))
			c.send(&pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "SELECT 1 FROM whoami"},
				&pgproto3.Query{String: "SELECT 2 FROM whoami"}, &pgproto3.Query{String: "COMMIT"})
			got := c.recv(4)
			if strings.Contains(got, "ERR:") {
				t.Fatalf("pipelined BEGIN; SELECT; SELECT; COMMIT: %s", got)
			}
			t.Log(got)
		})
	}
}

// An unnamed Parse skipped by the server after an error: the router thinks
// the backend holds it, answers the next identical Parse itself, and the
// Bind runs the server's previous unnamed statement.
func TestSkippedUnnamedParseRunsOldStatement(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'dup'"))
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('dup')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	c.send(&pgproto3.Parse{Name: "f", Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{PreparedStatement: "f"}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 'new' FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	c.send(&pgproto3.Parse{Query: "SELECT 'new' FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := c.recv(1)
	n := c.q("SELECT count(*) FROM sink WHERE body = 'dup'")
	if got != "P B D(new) C(SELECT 1) ZI" {
		t.Fatalf("SELECT 'new' answered %s; rows 'dup' now: %s", got, n)
	}
}

// A router-made error (unknown statement) in an extended pipeline must
// roll back the pipeline's implicit transaction, as a server error would.
func TestLocalErrorCommitsPipeline(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	t.Log(c.q("DELETE FROM sink WHERE body = 'localerr'"))
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('localerr')"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log(c.recv(1))
	if got := c.q("SELECT count(*) FROM sink WHERE body = 'localerr'"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("rows inserted by a pipeline that failed: %s, want 0", got)
	}
}

// Extended-protocol SET is now tracked; extended-protocol RESET is not.
func TestExtendedReset(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := tcConnect(t, s, "t2")
	for _, q := range []string{"SET statement_timeout = '777ms'", "RESET statement_timeout"} {
		c.send(&pgproto3.Parse{Query: q}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		t.Log(c.recv(1))
	}
	a := c.q("SELECT current_setting('statement_timeout') FROM whoami")
	b := c.q("/* tenant: t3 */ SELECT current_setting('statement_timeout') FROM whoami")
	if a != b || !strings.HasPrefix(b, "D(0)") {
		t.Fatalf("after extended SET then RESET: node a %s, node b %s, want 0", a, b)
	}
}

// A SET inside a multi-statement Query is neither tracked nor undone: the
// backend goes back to the pool with it.
func TestMultiStatementSetLeaks(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	t.Log(a.q("SET statement_timeout = '4321ms'; SELECT 1 FROM whoami"))
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT current_setting('statement_timeout') FROM whoami"); !strings.HasPrefix(got, "D(0)") {
		t.Fatalf("another client's statement_timeout: %s, want 0", got)
	}
}

// In transaction mode the shard's search_path and tenant id are set for
// the transaction only. A COMMIT or ROLLBACK inside an extended pipeline
// ends that transaction half way through the pipeline: the statements
// after it must still run on the tenant's shard.
func TestLocalSettingsAfterTxnEnd(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	shard := &pgproto3.Parse{Name: "shard", Query: "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"}
	run := func(name string) []pgproto3.FrontendMessage {
		return []pgproto3.FrontendMessage{&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}}
	}
	for _, end := range []string{"COMMIT", "ROLLBACK"} {
		for _, begin := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s begin=%v", end, begin), func(t *testing.T) {
				// The pool's one backend was last used for another tenant.
				if got := tcConnect(t, s, "t2").q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZI" {
					t.Fatalf("t2: %s", got)
				}
				c := tcConnect(t, s, "t3")
				if begin {
					if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
						t.Fatalf("BEGIN: %s", got)
					}
				}
				msgs := []pgproto3.FrontendMessage{shard, &pgproto3.Parse{Name: "end", Query: end}}
				msgs = append(msgs, run("shard")...)
				msgs = append(msgs, run("end")...)
				msgs = append(msgs, run("shard")...)
				msgs = append(msgs, run("shard")...)
				c.send(append(msgs, &pgproto3.Sync{})...)
				got := c.recv(1)
				row := "D(3,t3) C(SELECT 1)"
				tag := strings.Fields(end)[0]
				want := "P P B " + row + " B C(" + tag + ") B " + row + " B " + row + " ZI"
				if got != want {
					t.Fatalf("pipeline: %s\nwant %s", got, want)
				}
			})
		}
	}
}

// A named statement is prepared once per shard schema on a backend, so
// that Postgres keeps its plan (it re-plans a statement run with another
// search_path than it was planned with). Running it for tenants on
// different shards, over and over on the same backend, gives each
// tenant's rows.
func TestStatementPerSchema(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "")
	c.send(&pgproto3.Parse{Name: "q", Query: "SELECT shard, $1::text FROM whoami"}, &pgproto3.Sync{})
	if got := c.recv(1); got != "P ZI" {
		t.Fatalf("Parse: %s", got)
	}
	for i := 0; i < 8; i++ {
		for _, tenant := range []string{"t2", "t4"} { // two shards on node a
			c.send(&pgproto3.Parse{Query: "SELECT set_config('pgtenant.tenant', $1, false)"},
				&pgproto3.Bind{Parameters: [][]byte{[]byte(tenant)}}, &pgproto3.Execute{},
				&pgproto3.Bind{PreparedStatement: "q", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
			want := fmt.Sprintf("P B D(%s) C(SELECT 1) B D(%s,x) C(SELECT 1) ZI", tenant, tenant[1:])
			if got := c.recv(1); got != want {
				t.Fatalf("run %d for %s: %s, want %s", i, tenant, got, want)
			}
		}
	}
	// The backend holds the statement twice, once per schema, each with
	// its own plan: both were planned for their schema only.
	got := c.q("/* tenant: t2 */ SELECT count(*), sum(custom_plans + generic_plans) FROM pg_prepared_statements WHERE statement = 'SELECT shard, $1::text FROM whoami'")
	if got != "D(2,16) C(SELECT 1) ZI" {
		t.Fatalf("prepared on the backend: %s, want 2 statements run 16 times", got)
	}
}

// Statements prepared on a backend for clients are bounded by
// Config.MaxPrepared: some are closed when the next client gets it.
func TestMaxPrepared(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}, MaxPrepared: 4}, nil)
	c := tcConnect(t, s, "t2")
	for round := 0; round < 2; round++ {
		for i := 0; i < 10; i++ {
			name := fmt.Sprintf("q%d", i)
			c.send(&pgproto3.Parse{Name: name, Query: fmt.Sprintf("SELECT shard + %d FROM whoami", i)},
				&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if got, want := c.recv(1), fmt.Sprintf("P B D(%d) C(SELECT 1) ZI", 2+i); got != want {
				t.Fatalf("round %d, %s: %s, want %s", round, name, got, want)
			}
			c.send(&pgproto3.Close{ObjectType: 'S', Name: name}, &pgproto3.Sync{})
			c.recv(1)
		}
	}
	got := c.q("SELECT count(*) <= 4, count(*) FILTER (WHERE name ~ '^pgtenant_[0-9]') > 0 FROM pg_prepared_statements")
	if got != "D(t,t) C(SELECT 1) ZI" {
		t.Fatalf("statements on the backend: %s, want at most 4, some of them the client's", got)
	}
}
