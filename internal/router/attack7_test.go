package router

// Hostile-client trials (session 10, second round): the setup sent ahead of
// a buffered Parse pipeline (parselook.go), a stale shared statement
// prepared afresh, and a backend's hidden session settings inherited by the
// next transaction of the same client for another tenant.

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Pipelines around the transaction-local setup that goes ahead of a
// buffered Parse of DML: each statement reads its own tenant's shard and
// id, an error or a second tenant leaves nothing behind, and the next
// client of the (only) backend gets its own tenant.
func TestHostileParseLookHeld(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	hint := func(tenant, sql string) string { return "/* tenant: " + tenant + " */ " + sql }
	type msgs = []pgproto3.FrontendMessage
	for _, tt := range []struct {
		name   string
		writes []msgs // each one write; the last ends with a Sync
		syncs  int
		want   string
	}{
		{"describe before bind, row limit", []msgs{{
			&pgproto3.Parse{Name: "lim", Query: hint("t4", who+", generate_series(1, 3)")},
			&pgproto3.Describe{ObjectType: 'S', Name: "lim"}, &pgproto3.Bind{PreparedStatement: "lim"},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{},
			&pgproto3.Close{ObjectType: 'S', Name: "lim"}, &pgproto3.Sync{},
		}}, 2, "P B D(4,t4) *pgproto3.PortalSuspended D(4,t4) *pgproto3.PortalSuspended ZI *pgproto3.CloseComplete ZI"},
		{"error in the bind", []msgs{{
			&pgproto3.Parse{Query: hint("t4", who+" WHERE $1::int > 0")}, &pgproto3.Bind{Parameters: [][]byte{[]byte("x")}},
			&pgproto3.Execute{}, &pgproto3.Sync{},
		}}, 1, `P E(22P02:invalid input syntax for type integer: "x") ZI`},
		{"error in the parse", []msgs{{
			&pgproto3.Parse{Name: "gone", Query: hint("t4", "SELECT * FROM a7_missing")}, &pgproto3.Bind{PreparedStatement: "gone"},
			&pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Bind{PreparedStatement: "gone"}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}}, 2, `E(42P01:relation "a7_missing" does not exist) ZI E(26000:`},
		{"two portals", []msgs{{
			&pgproto3.Parse{Name: "two", Query: hint("t4", who)}, &pgproto3.Bind{DestinationPortal: "p1", PreparedStatement: "two"},
			&pgproto3.Bind{DestinationPortal: "p2", PreparedStatement: "two"}, &pgproto3.Describe{ObjectType: 'P', Name: "p2"},
			&pgproto3.Execute{Portal: "p2"}, &pgproto3.Execute{Portal: "p1"}, &pgproto3.Sync{},
		}}, 1, "P B B D(4,t4) C(SELECT 1) D(4,t4) C(SELECT 1) ZI"},
		{"two tenants", []msgs{{
			&pgproto3.Parse{Query: hint("t4", "INSERT INTO sink (body) VALUES ('a7-two')")}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: hint("t6", "INSERT INTO sink (body) VALUES ('a7-two')")}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}}, 1, "P B C(INSERT 0 1) P E(25001:"},
		{"two transactions in one write", []msgs{{
			&pgproto3.Parse{Query: hint("t4", who)}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: hint("t6", who)}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}}, 2, "P B D(4,t4) C(SELECT 1) ZI P B D(6,t6) C(SELECT 1) ZI"},
		{"split at the sync", []msgs{
			{&pgproto3.Parse{Query: hint("t4", who)}, &pgproto3.Bind{}, &pgproto3.Execute{}},
			{&pgproto3.Sync{}},
		}, 1, "P B D(4,t4) C(SELECT 1) ZI"},
		{"close of the statement before the sync", []msgs{{
			&pgproto3.Parse{Name: "cl", Query: hint("t4", who)}, &pgproto3.Bind{PreparedStatement: "cl"}, &pgproto3.Execute{},
			&pgproto3.Close{ObjectType: 'S', Name: "cl"}, &pgproto3.Sync{},
		}}, 1, "P B D(4,t4) C(SELECT 1) *pgproto3.CloseComplete ZI"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := tcConnect(t, s, "")
			for _, w := range tt.writes {
				c.send(w...)
			}
			if got := c.recv(tt.syncs); !strings.HasPrefix(got, tt.want) || !strings.HasSuffix(got, "ZI") {
				t.Errorf("pipeline: %s, want %s ... ZI", got, tt.want)
			}
			if got := c.q(hint("t2", who)); got != "D(2,t2) C(SELECT 1) ZI" {
				t.Errorf("same client, another tenant: %s", got)
			}
			d := tcConnect(t, s, "t6")
			if got := d.q("SELECT shard, current_setting('pgtenant.tenant_id'), split_part(current_setting('search_path'), ',', 1) FROM whoami"); got != "D(6,t6,shard_0006) C(SELECT 1) ZI" {
				t.Errorf("next client: %s", got)
			}
			noRows(t, d, "a7-two")
			noRows(t, tcConnect(t, s, "t4"), "a7-two")
		})
	}
}

// Two clients sharing a server statement that DDL made stale, one of them
// pipelining two Binds of it, another closing and re-parsing it: each gets
// the table's new rows (at most one 0A000 each), never another text's.
func TestHostileStaleStatementHeld(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a, b := tcConnect(t, s, "t2"), tcConnect(t, s, "t2")
	if got := a.q("DROP TABLE IF EXISTS a7_stale; CREATE TABLE a7_stale (col int); INSERT INTO a7_stale VALUES (7)"); !strings.HasSuffix(got, "ZI") {
		t.Fatalf("setup: %s", got)
	}
	defer a.q("DROP TABLE a7_stale")
	for _, c := range []*tc{a, b} {
		c.send(&pgproto3.Parse{Name: "s", Query: "SELECT col FROM a7_stale"}, &pgproto3.Parse{Name: "o", Query: "SELECT col::text || 'o' FROM a7_stale"}, &pgproto3.Sync{})
		c.recv(1)
	}
	if got := b.q("DROP TABLE a7_stale; CREATE TABLE a7_stale (col text); INSERT INTO a7_stale VALUES ('x')"); !strings.HasSuffix(got, "ZI") {
		t.Fatalf("drop and create: %s", got)
	}
	run := func(c *tc, n int, stmt string) string {
		var m []pgproto3.FrontendMessage
		for i := 0; i < n; i++ {
			m = append(m, &pgproto3.Bind{PreparedStatement: stmt}, &pgproto3.Execute{})
		}
		c.send(append(m, &pgproto3.Sync{})...)
		return c.recv(1)
	}
	// a: two Binds in one pipeline; the first may fail (once).
	got := run(a, 2, "s")
	if got != "B D(x) C(SELECT 1) B D(x) C(SELECT 1) ZI" && !strings.HasPrefix(got, "E(0A000:") {
		t.Errorf("a's pipeline: %s", got)
	}
	if got := run(a, 1, "s"); got != "B D(x) C(SELECT 1) ZI" {
		t.Errorf("a again: %s", got)
	}
	if got := run(b, 1, "o"); got != "B D(xo) C(SELECT 1) ZI" && !strings.HasPrefix(got, "E(0A000:") {
		t.Errorf("b's other statement: %s", got)
	}
	if got := run(b, 1, "s"); got != "B D(x) C(SELECT 1) ZI" {
		t.Errorf("b: %s", got)
	}
	b.send(&pgproto3.Close{ObjectType: 'S', Name: "s"}, &pgproto3.Parse{Name: "s", Query: "SELECT col FROM a7_stale"}, &pgproto3.Sync{})
	b.recv(1)
	for _, c := range []*tc{b, a} {
		if got := run(c, 1, "s") + " | " + run(c, 1, "o"); got != "B D(x) C(SELECT 1) ZI | B D(xo) C(SELECT 1) ZI" {
			t.Errorf("after b re-parsed: %s", got)
		}
	}
}

// One client (an application's pooled connection serving many tenants in
// turn) on one backend: a function run in a transaction for tenant t12 sets
// the tenant id for the session; the client's next transaction, for t4
// (whose settings the router had set on the backend for the session
// before), must run as t4.
func TestHostileHiddenSettingSameClient(t *testing.T) {
	nodeExec(t, hostileSettingSQL)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	z := tcConnect(t, s, "t4")
	z.q("DO $$ BEGIN END $$") // the backend's settings set for the session
	z.q("SET pgtenant.tenant = 't12'")
	if got := z.q("SELECT hostile_setting('pgtenant.tenant_id', 't6') FROM whoami"); got != "D(1) C(SELECT 1) ZI" {
		t.Fatalf("function: %s", got)
	}
	z.q("SET pgtenant.tenant = 't4'")
	got := z.q("SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami")
	z.send(&pgproto3.Parse{Query: "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got += " | " + z.recv(1)
	if want := "D(4,t4) C(SELECT 1) ZI | P B D(4,t4) C(SELECT 1) ZI"; got != want {
		t.Fatalf("t4 after t12's function set the tenant id on the same client's backend:\n got: %s\nwant: %s", got, want)
	}
}

// A transaction block opened by the next client of a backend whose session
// tenant id and search_path another client's function set (the deferred
// BEGIN carries the setup, transaction-local): it runs as its own tenant on
// its own shard, as a statement outside a block does since c18c17d.
func TestHostileHiddenSettingBegin(t *testing.T) {
	nodeExec(t, hostileSettingSQL)
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	for _, begin := range []string{"BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ"} {
		x := tcConnect(t, s, "t2")
		x.q("DO $$ BEGIN END $$") // the backend's settings set for the session
		if got := x.q("SELECT hostile_setting('pgtenant.tenant_id', 't4') + hostile_setting('search_path', 'shard_0004, public') FROM whoami"); got != "D(2) C(SELECT 1) ZI" {
			t.Fatalf("function: %s", got)
		}
		x.pc.Close(ctx(t))
		y := tcConnect(t, s, "t2")
		got := y.q(begin) + " | " + y.q("SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami") + " | " + y.q("COMMIT")
		if want := "C(BEGIN) ZT | D(2,t2) C(SELECT 1) ZT | C(COMMIT) ZI"; got != want {
			t.Errorf("%s after another client's function set the backend's settings:\n got: %s\nwant: %s", begin, got, want)
		}
		y.q("DO $$ BEGIN PERFORM 1; END $$")
		y.pc.Close(ctx(t))
	}
}

// Session mode, one client serving tenants in turn: a function run for t12
// sets the session search_path to another shard; the client's next
// statement, for t4 (on t12's shard, so the router's path is already the
// right one), must still read its own shard. PostgreSQL 18 reports the
// change; before it the router must set the path again on a tenant switch.
func TestHostileHiddenPathSessionSwitch(t *testing.T) {
	nodeExec(t, hostileSettingSQL)
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	z := tcConnect(t, s, "t12")
	if got := z.q("SELECT hostile_setting('search_path', 'shard_0006, public') FROM whoami"); got != "D(1) C(SELECT 1) ZI" {
		t.Fatalf("function: %s", got)
	}
	z.q("SET pgtenant.tenant = 't4'")
	if got := z.q("SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"); got != "D(4,t4) C(SELECT 1) ZI" {
		t.Fatalf("t4 after t12's function set the session search_path: %s", got)
	}
}

// An SSLRequest over a connection already encrypted (direct SSL, or an
// earlier SSLRequest) gets PostgreSQL's FATAL 0A000, not TLS inside TLS.
func TestHostileSSLRequestInsideTLS(t *testing.T) {
	s := startRouter(t, Config{TLS: selfSigned(t)}, nil)
	ssl := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)
	nc, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"postgresql"}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.Write(ssl)
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(nc)
	if len(got) == 0 || got[0] != 'E' || !strings.Contains(string(got), "C0A000") {
		t.Errorf("SSLRequest over direct TLS: got %q, want FATAL 0A000", got)
	}
}

// A FunctionCall behind unsynced work (answered after a Flush) or inside a
// transaction block: 0A000, the work rolled back as a server's error would
// roll it back, and the session goes on (its Sync, its COMMIT).
func TestHostileFunctionCallMidPipeline(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	fc := &pgproto3.FunctionCall{Function: 952, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("1")}}
	a := tcConnect(t, s, "t2")
	a.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('a7-fc')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	if got := recvUntil[*pgproto3.CommandComplete](a); got != "P B C(INSERT 0 1)" {
		t.Fatalf("unsynced INSERT: %s", got)
	}
	a.send(fc)
	if got := a.recv(1); !strings.HasPrefix(got, "E(0A000:") || !strings.HasSuffix(got, "ZI") {
		t.Errorf("FunctionCall after unsynced work: %s", got)
	}
	a.send(&pgproto3.Sync{})
	if got := a.recv(1); got != "ZI" {
		t.Errorf("the Sync after it: %s", got)
	}
	a.q("BEGIN")
	a.q("INSERT INTO sink (body) VALUES ('a7-fc')")
	a.send(fc)
	if got := a.recv(1); !strings.HasPrefix(got, "E(0A000:") || !strings.HasSuffix(got, "ZE") {
		t.Errorf("FunctionCall in a transaction block: %s", got)
	}
	if got := a.q("COMMIT"); got != "C(ROLLBACK) ZI" {
		t.Errorf("COMMIT after it: %s", got)
	}
	noRows(t, tcConnect(t, s, "t2"), "a7-fc")
}

// hostileSettingSQL creates a function that sets any setting for the
// session, as an application's function may (the router cannot see it).
const hostileSettingSQL = `CREATE OR REPLACE FUNCTION public.hostile_setting(n text, v text) RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM pg_catalog.set_config(n, v, false) $$`

// noRows fails t when c's shard has sink rows with body.
func noRows(t *testing.T, c *tc, body string) {
	t.Helper()
	if got := c.q("SELECT count(*) FROM sink WHERE body = '" + body + "'"); got != "D(0) C(SELECT 1) ZI" {
		t.Errorf("sink rows %q kept: %s", body, got)
	}
}

// A client's session setting replayed on the backend (a Query of its own
// before the path) with the local setup ahead of a buffered Parse, then a
// simple Query for another tenant in the same write: each reads its shard
// with the client's setting; the next client of the backend has neither.
func TestHostileParseLookReplayHeld(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "")
	if got := c.q("SET work_mem = '1234kB'"); got != "C(SET) ZI" {
		t.Fatalf("SET: %s", got)
	}
	const who = "SELECT shard, current_setting('pgtenant.tenant_id'), current_setting('work_mem') FROM whoami"
	c.send(&pgproto3.Parse{Query: "/* tenant: t4 */ " + who}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "/* tenant: t6 */ " + who})
	if got, want := c.recv(2), "P B D(4,t4,1234kB) C(SELECT 1) ZI D(6,t6,1234kB) C(SELECT 1) ZI"; got != want {
		t.Errorf("pipeline then Query:\n got: %s\nwant: %s", got, want)
	}
	d := tcConnect(t, s, "t2")
	if got := d.q(who); got != "D(2,t2,4MB) C(SELECT 1) ZI" {
		t.Errorf("next client: %s", got)
	}
}
