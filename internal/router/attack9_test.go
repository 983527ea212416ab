package router

// Hostile-client trials (session 12) of the code session 11 landed: the
// listening guard of a session-mode client (UNLISTEN * and DISCARD ALL as
// the lexer reads them), schema changes hidden from the lexer (ddl.go),
// the shape check of a statement prepared afresh (stale.go), a cancel
// racing the pool wait, and a client message cut by the idle watch.

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// A session-mode client listening on tenant t4's node may not switch to
// another tenant until it stops listening (its backend would hear t4's
// notifications for it). Before, "UNLISTEN *" and "DISCARD ALL" were
// matched as text: any '*' (or "all") in an UNLISTEN (DISCARD) statement
// cleared the guard, though the backend still listened, and the client,
// switched to t6 on the same node and backend, heard t4's notification. A
// LISTEN after another statement in one Query never set it.
func TestHostileListenGuardSpellings(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	for _, sql := range []string{
		"UNLISTEN a9other; SELECT '*'",
		`UNLISTEN "*"`,
		"UNLISTEN a9other /* * */",
		"UNLISTEN a9other -- *",
		"UNLISTEN *; LISTEN a9ch",
		"DISCARD PLANS /* all */",
		"DISCARD SEQUENCES; SELECT 'all'",
		"SELECT 1; LISTEN a9ch",
	} {
		t.Run(sql, func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
			other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
			channel := "a9ch"
			if strings.Contains(sql, "LISTEN a9ch") {
				channel = "" // the statement itself listens
			}
			a := a8Client(t, s, channel, nil)
			if got := a.q(sql); strings.Contains(got, "E(") {
				t.Fatalf("%s: %s", sql, got)
			}
			if got := a.q("SET pgtenant.tenant = 't6'"); got != "C(SET) ZI" {
				t.Fatalf("SET t6: %s", got)
			}
			got := a.q(who)
			if strings.HasPrefix(got, "E(0A000:") {
				return // still listening: the switch is refused
			}
			t.Errorf("switch to t6 while the backend listens: %s", got)
			if got == "D(6,t6) C(SELECT 1) ZI" {
				notifyAndSee(t, other, a, "a9ch", "t4's, heard on t6")
			}
		})
	}
}

// A session-mode client listening on t4 that selected t5 (another node)
// can stop listening: UNLISTEN runs on the backend that listens. Before,
// it was refused like any statement for t5 (0A000 "cannot switch tenant
// while listening"), and the client had to select t4 again first. A LISTEN
// by Parse/Bind/Execute holds the session to its tenant as one by Query.
func TestHostileUnlistenOtherTenant(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	a := a8Client(t, s, "", nil)
	// steps runs queries; a want ending in ':' is an error's prefix.
	steps := func(qs ...string) {
		t.Helper()
		for i := 0; i < len(qs); i += 2 {
			got, want := a.q(qs[i]), qs[i+1]
			if got != want && !(strings.HasSuffix(want, ":") && strings.HasPrefix(got, want)) {
				t.Fatalf("%s: %s, want %s", qs[i], got, want)
			}
		}
	}
	// The first LISTEN for another tenant than the backend's: it moves.
	// (Before, the guard was set before the statement was routed: 0A000.)
	steps(who, "D(4,t4) C(SELECT 1) ZI",
		"SET pgtenant.tenant = 't6'", "C(SET) ZI",
		"LISTEN a9first", "C(LISTEN) ZI",
		"UNLISTEN *", "C(UNLISTEN) ZI",
		"SET pgtenant.tenant = 't4'", "C(SET) ZI")
	a.send(&pgproto3.Parse{Query: "LISTEN a9ext"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := a.recv(1); got != "P B C(LISTEN) ZI" {
		t.Fatalf("LISTEN by Parse: %s", got)
	}
	notifyAndSee(t, other, a, "a9ext", "to t4")
	steps("SET pgtenant.tenant = 't6'", "C(SET) ZI",
		who, "E(0A000:", // the same node, after a LISTEN by Parse
		"SET pgtenant.tenant = 't5'", "C(SET) ZI",
		who, "E(0A000:",
		"UNLISTEN *", "C(UNLISTEN) ZI", // with t5 selected
		who, "D(5,t5) C(SELECT 1) ZI",
		"SELECT count(*) FROM pg_listening_channels()", "D(0) C(SELECT 1) ZI")
}

// Schema changes the lexer did not see: EXPLAIN ANALYZE CREATE TABLE ...
// AS and SELECT ... INTO create a table; a DO block runs CREATE, directly
// or by EXECUTE of a string. With ddl = refuse each is refused with 0A000
// and creates nothing, sent by Query or by Parse/Bind/Execute, in either
// pool mode; before, each created the table on one shard (with ddl = warn,
// silently). In a session-mode transaction block the refusal aborts the
// block, its insert is rolled back, and the backend serves the next client
// clean. What the lexer saw already held: nested comments, odd
// whitespace, a DDL second in a query string, a dollar-quoted ';'.
func TestHostileDDLHidden(t *testing.T) {
	const table = "a9_hidden"
	dropEverywhere(t, table)
	t.Cleanup(func() { nodeExec(t, "ALTER TABLE shard_0002.sink DROP COLUMN IF EXISTS a9_col") })
	hidden := []string{
		"EXPLAIN ANALYZE CREATE TABLE " + table + " AS SELECT 1 AS id",
		"explain (analyze, costs off) create table " + table + " as select 1 as id",
		"SELECT 1 AS id INTO " + table,
		"SELECT 1 AS id INTO TABLE \"" + table + "\"",
		"DO $$ BEGIN CREATE TABLE " + table + " (id int); END $$",
		"DO $$ BEGIN EXECUTE format('CREATE TABLE %I (id int)', '" + table + "'); END $$",
		"DO $x$ DECLARE n int; BEGIN IF true THEN ALTER TABLE sink ADD COLUMN a9_col int; END IF; END $x$",
		"/* /* nested */ */\vCREATE\fTABLE/**/" + table + " (id int)",
		"SELECT $$;$$; CREATE TABLE " + table + " (id int)",
	}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, DDL: DDLRefuse, Pool: PoolConfig{MaxSize: 1}}, nil)
		for _, exec := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
			c := connect(t, s, "t2", exec)
			for _, sql := range hidden {
				if exec != pgx.QueryExecModeSimpleProtocol && strings.HasPrefix(sql, "SELECT $$") {
					continue // two statements: not by Parse
				}
				_, err := c.Exec(ctx(t), sql)
				if pgCode(err) != "0A000" {
					t.Errorf("%s/%s: %q: %v, want 0A000", mode, exec, sql, err)
				}
				if got := tableSchemas(t, table); len(got) != 0 {
					t.Errorf("%s/%s: %q created %s in %v", mode, exec, sql, table, got)
					dropTable(t, table)
				}
			}
			if err := c.Ping(ctx(t)); err != nil {
				t.Fatal(err)
			}
			c.Close(ctx(t)) // (session mode: the only backend)
		}
		// Temporary objects in a DO body are not schema changes.
		c := connect(t, s, "t2", pgx.QueryExecModeSimpleProtocol)
		if _, err := c.Exec(ctx(t), "DO $$ BEGIN CREATE TEMP TABLE a9_tmp (id int) ON COMMIT DROP; DROP TABLE pg_temp.a9_tmp; END $$"); err != nil {
			t.Errorf("%s: a temporary table in DO: %v", mode, err)
		}
		c.Close(ctx(t))
		if mode != PoolSession {
			continue
		}
		a := tcConnect(t, s, "t2")
		if got := a.q("BEGIN; INSERT INTO sink (body) VALUES ('a9-ddl-block')"); got != "C(BEGIN) C(INSERT 0 1) ZT" {
			t.Fatalf("block: %s", got)
		}
		if got := a.q("SELECT 1 AS id INTO " + table); !strings.HasPrefix(got, "E(0A000:") || !strings.HasSuffix(got, "ZE") {
			t.Errorf("DDL in the block: %s", got)
		}
		if got := a.q("COMMIT"); got != "C(ROLLBACK) ZI" {
			t.Errorf("COMMIT of the aborted block: %s", got)
		}
		a.pc.Close(ctx(t))
		b := tcConnect(t, s, "t2") // the same (only) backend
		if got := b.q("SELECT count(*), (SELECT count(*) FROM pg_stat_activity WHERE pid = pg_backend_pid() AND state = 'active') FROM sink WHERE body = 'a9-ddl-block'"); got != "D(0,1) C(SELECT 1) ZI" {
			t.Errorf("next client: %s", got)
		}
	}
}

func dropTable(t *testing.T, name string) {
	for _, n := range []string{nodeDSN(nodeA), nodeDSN(nodeB)} {
		c, err := pgx.Connect(ctx(t), n)
		if err != nil {
			t.Fatal(err)
		}
		for sh := 0; sh < testShards; sh++ {
			c.Exec(ctx(t), "DROP TABLE IF EXISTS "+pgx.Identifier{placement.SchemaName(sh), name}.Sanitize())
		}
		c.Close(ctx(t))
	}
}

// The shape check of a described statement prepared afresh (stale.go),
// in transaction mode, where a second client holding the first backend
// sends the statement to another:
//   - DDL changes a parameter's type, not the columns: the fresh Describe
//     differs (the parameter), and the Bind is refused with 0A000 rather
//     than binding the client's int4 as the new type (a server refuses it
//     too, with 42883, its statement keeping the old parameter type);
//   - the fresh backend is terminated while the check waits on it (a lock
//     held on the table stalls the fresh Parse and Describe): the client
//     gets the server's 57P01 and its connection is closed, as on a server;
//     the holder and the next client are served.
func TestHostileStaleCheck(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	const table = "a9_stale"
	ddl := shardDDL(t, "t2")
	ddl("CREATE TABLE %s (a int, v int); INSERT INTO %[1]s VALUES (1, 7)", table)
	defer ddl("DROP TABLE %s", table)
	fe, nc := rawConn(t, s, "t2")
	holder, hnc := rawConn(t, s, "t2")
	step := func(name string, f *pgproto3.Frontend, c net.Conn, want []string, msgs ...pgproto3.FrontendMessage) {
		t.Helper()
		for _, m := range msgs {
			f.Send(m)
		}
		if err := f.Flush(); err != nil {
			t.Fatal(err)
		}
		if want == nil {
			return
		}
		if got := readUntilRFQ(t, f, c); !slices.Equal(got, want) {
			t.Fatalf("%s: got %v, want %v", name, got, want)
		}
	}
	param := []byte{0, 0, 0, 7} // int4 7, binary
	step("prepare and describe", fe, nc, []string{"1", "?", "T", "1", "?", "T", "Z I"},
		&pgproto3.Parse{Name: "s_a", Query: "SELECT a FROM " + table},
		&pgproto3.Describe{ObjectType: 'S', Name: "s_a"},
		&pgproto3.Parse{Name: "s_p", Query: "SELECT a FROM " + table + " WHERE v = $1"},
		&pgproto3.Describe{ObjectType: 'S', Name: "s_p"},
		&pgproto3.Sync{})
	step("holder takes the backend", holder, hnc, []string{"C", "T", "D 2", "C", "Z T"},
		&pgproto3.Query{String: "BEGIN; SELECT shard FROM whoami"})
	ddl("ALTER TABLE %s ALTER COLUMN v TYPE text", table)
	step("a parameter's type changed", fe, nc, []string{"E 0A000", "Z I"},
		&pgproto3.Bind{PreparedStatement: "s_p", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{param}}, &pgproto3.Execute{}, &pgproto3.Sync{})

	lock, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	if _, err := lock.Exec(ctx(t), "BEGIN; LOCK TABLE shard_0002."+table+" IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	step("bind while the table is locked", fe, nc, nil,
		&pgproto3.Bind{PreparedStatement: "s_a"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	mon, err := pgx.Connect(ctx(t), nodeDSN(nodeA)) // (pg_stat_activity is read once per transaction: not lock's)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close(context.Background())
	var pid int
	for pid == 0 { // the fresh backend waits for the lock
		err := mon.QueryRow(ctx(t), "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'").Scan(&pid)
		if err != nil && err != pgx.ErrNoRows {
			t.Fatal(err)
		}
	}
	if _, err := mon.Exec(ctx(t), "SELECT pg_terminate_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	if got := readUntilRFQ(t, fe, nc); !slices.Equal(got, []string{"E 57P01"}) {
		t.Fatalf("backend terminated during the check: %v", got)
	}
	if got := readUntilRFQ(t, fe, nc); len(got) != 1 || !strings.HasPrefix(got[0], "ERR") {
		t.Fatalf("after the 57P01: %v, want the connection closed", got)
	}
	if _, err := lock.Exec(ctx(t), "COMMIT"); err != nil {
		t.Fatal(err)
	}
	step("holder ends", holder, hnc, []string{"C", "Z I"}, &pgproto3.Query{String: "COMMIT"})
	next, nnc := rawConn(t, s, "t2")
	step("next client", next, nnc, []string{"1", "2", "D 1", "C", "Z I"},
		&pgproto3.Parse{Name: "s_a", Query: "SELECT a FROM " + table}, &pgproto3.Bind{PreparedStatement: "s_a"}, &pgproto3.Execute{}, &pgproto3.Sync{})
}

// Cancels racing the pool wait: the only backend is freed (the holder
// commits) while two cancel requests for the waiting client arrive. Each
// round the client is told either 57014 with nothing of its statement
// run, or its statement's answer with its row there, and never both; the
// backend is neither lost nor held (the holder's next statement gets it,
// the pool ends with one connection and no waiter); the client's next
// statement runs, not cancelled by the second request.
func TestHostileCancelRacesPoolWait(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	h := tcConnect(t, s, "t2")
	a := tcConnect(t, s, "t2")
	a.q("DELETE FROM sink WHERE body LIKE 'a9-race-%'")
	cancel := func() {
		nc, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			return // the test fails below: the statement is not cancelled
		}
		defer nc.Close()
		buf, _ := (&pgproto3.CancelRequest{ProcessID: a.pc.PID(), SecretKey: a.pc.SecretKey()}).Encode(nil)
		nc.Write(buf)
		io.Copy(io.Discard, nc)
	}
	cancelled := 0
	const rounds = 30
	for i := 0; i < rounds; i++ {
		if got := h.q("BEGIN; SELECT 1 FROM whoami"); got != "C(BEGIN) D(1) C(SELECT 1) ZT" {
			t.Fatalf("round %d: holder: %s", i, got)
		}
		body := fmt.Sprintf("a9-race-%d", i)
		a.send(&pgproto3.Query{String: "INSERT INTO sink (body) VALUES ('" + body + "')"})
		if !waitPoolWaiting(s, 10*time.Second) {
			t.Fatalf("round %d: the statement is not waiting for the pool", i)
		}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); cancel() }()
		go func() { defer wg.Done(); cancel() }()
		if got := h.q("COMMIT"); got != "C(COMMIT) ZI" {
			t.Fatalf("round %d: holder's COMMIT: %s", i, got)
		}
		wg.Wait()
		got := a.recv(1)
		want := "D(1) C(SELECT 1) ZI"
		switch got {
		case "E(57014:canceling statement due to user request) ZI":
			cancelled++
			want = "D(0) C(SELECT 1) ZI"
		case "C(INSERT 0 1) ZI":
		default:
			t.Fatalf("round %d: the raced statement: %s", i, got)
		}
		if got := a.q("SELECT count(*) FROM sink WHERE body = '" + body + "'"); got != want {
			t.Fatalf("round %d: told %q; its row: %s", i, got, want)
		}
	}
	if got := h.q("SELECT 1 FROM whoami"); got != "D(1) C(SELECT 1) ZI" {
		t.Fatalf("the holder after the races: %s", got)
	}
	for _, st := range s.PoolStats() {
		if st.Total > 1 || st.Waiting != 0 || st.InUse != 0 {
			t.Errorf("pool after the races: %+v", st)
		}
	}
	t.Logf("%d of %d rounds cancelled", cancelled, rounds)
}

// A client that sends half a message and stalls forever: its read never
// completes, yet the idle timeouts still end it. Inside a transaction
// (FATAL 25P03) its transaction is rolled back, outside one
// (ClientIdleTimeout) it is closed; either way the backend serves the
// next client (MaxSize 1), in both pool modes, for a body within the read
// buffer and one past it (read straight from the socket, the cut path).
func TestHostileHalfMessageStall(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		for _, size := range []int{100, 100 << 10} {
			for _, inTxn := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/%d/txn=%v", mode, size, inTxn), func(t *testing.T) {
					s := startRouter(t, Config{PoolMode: mode, IdleInTransactionTimeout: 300 * time.Millisecond, ClientIdleTimeout: 300 * time.Millisecond,
						Pool: PoolConfig{MaxSize: 1, WaitTimeout: 10 * time.Second}}, nil)
					a := tcConnect(t, s, "t2")
					first := "SELECT val FROM items WHERE id = 4"
					if inTxn {
						first = "BEGIN; SELECT val FROM items WHERE id = 4 FOR UPDATE"
					}
					if got := a.q(first); !strings.Contains(got, "D(shard2-4)") {
						t.Fatalf("a: %s", got)
					}
					q := "SELECT '" + strings.Repeat("x", size) + "'"
					msg := wire.Frame(nil, wire.MsgQuery, append([]byte(q), 0))
					if _, err := a.pc.Conn().Write(msg[:len(msg)/2]); err != nil {
						t.Fatal(err)
					}
					got := recvUntil[*pgproto3.ReadyForQuery](a)
					if !strings.HasSuffix(got, "CLOSED") || (inTxn && !strings.HasPrefix(got, "E(25P03:")) {
						t.Fatalf("a, stalled half way through a message: %s", got)
					}
					b := tcConnect(t, s, "t2")
					b.q("SET lock_timeout = '5s'")
					if got := b.q("SELECT val FROM items WHERE id = 4 FOR UPDATE"); got != "D(shard2-4) C(SELECT 1) ZI" {
						t.Fatalf("next client: %s", got)
					}
				})
			}
		}
	}
}

// TestListenGuardDeferredBegin: UNLISTEN * in a transaction the router
// deferred (BEGIN answered by the router: ss.status is still 'I') must not
// clear the listening flag: the ROLLBACK undoes the UNLISTEN on the
// server, and a switch to t6 (same node, backend kept) would leave the
// client listening on t4's channel (review 12; fixed with ss.inTxn).
func TestListenGuardDeferredBegin(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	a := a8Client(t, s, "r12ch", nil)
	for _, q := range []string{"BEGIN", "UNLISTEN *", "ROLLBACK", "SET pgtenant.tenant = 't6'"} {
		t.Logf("%s: %s", q, a.q(q))
	}
	got := a.q(who)
	if strings.HasPrefix(got, "E(0A000:") {
		return
	}
	t.Errorf("switched to t6 while the backend listens: %s; listening: %s", got, a.q("SELECT count(*) FROM pg_listening_channels()"))
	notifyAndSee(t, other, a, "r12ch", "t4's, heard on t6")
}

// TestDiscardAllDeferredBegin: a server refuses DISCARD ALL in a
// transaction block (25001), a BEGIN the router deferred too: the router
// must send it (not answer it itself, transaction mode) and keep the
// session's settings and statements (review 12).
func TestDiscardAllDeferredBegin(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			a := a8Client(t, s, "", nil)
			steps := []string{"SET application_name = 'r12'", "", "BEGIN", "", "DISCARD ALL", "E(25001:", "ROLLBACK", "", "SHOW application_name", "D(r12)"}
			for i := 0; i < len(steps); i += 2 {
				got := a.q(steps[i])
				if w := steps[i+1]; w != "" && !strings.Contains(got, w) {
					t.Errorf("%s: %s, want %s", steps[i], got, w)
				}
			}
		})
	}
}
