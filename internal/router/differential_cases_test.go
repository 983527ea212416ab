package router

// Sequences the differential tester found (see differential_test.go),
// each a router bug once (failed before its fix), kept as regression cases
// compared with PostgreSQL in both pool modes.

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

type fm = pgproto3.FrontendMessage

func q(s string) []fm { return []fm{&pgproto3.Query{String: s}} }

// diffCases are the sequences, named by what they showed.
var diffCases = []struct {
	name string
	seq  [][]fm
}{
	{"seed 237: hung after 34000 for Execute of no portal: a setup Query sent before the Parse that followed was skipped by the server, its ReadyForQuery awaited", [][]fm{
		q("RELEASE SAVEPOINT s1"), // an error: the next statement gets a setup
		{&pgproto3.Execute{}, &pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Sync{}},
		q("SELECT 1"),
	}},
	{"seed 186: in a block, Execute of no portal ran the router's own (a deferred BEGIN's or the setup's): SELECT 0, not 34000", [][]fm{
		q("BEGIN; SET LOCAL application_name = 'local'"),
		{&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		q("BEGIN"),
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"ROLLBACK TO a savepoint dropped the transaction's SETs made before it (its tag is ROLLBACK)", [][]fm{
		q("BEGIN"),
		q("SET application_name = 'a'"),
		q("SAVEPOINT s"),
		q("SET statement_timeout = '7s'"),
		q("ROLLBACK TO s"),
		q("COMMIT"),
		q("SHOW application_name"),
		q("SHOW statement_timeout"),
		q("BEGIN; SET application_name = 'b'; SAVEPOINT s; SET statement_timeout = '8s'; ROLLBACK TO s; COMMIT"),
		q("SHOW application_name"),
		q("SHOW statement_timeout"),
		q("BEGIN"),
		{&pgproto3.Parse{Query: "SET application_name = 'c'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "SAVEPOINT \"S\""}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SET statement_timeout = '9s'"),
		q("SAVEPOINT t"),
		q("SELECT 1/0"),
		{&pgproto3.Parse{Query: "ROLLBACK TO SAVEPOINT \"S\""}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("RELEASE s"),
		q("COMMIT"),
		q("SHOW application_name"),
		q("SHOW statement_timeout"),
		q("BEGIN; SET application_name = 'd'; SAVEPOINT s; SET statement_timeout = '10s'; RELEASE s; COMMIT"),
		q("SHOW application_name"),
		q("SHOW statement_timeout"),
	}},
	{"seed 805 (1000 seeds): a session set_config by Parse/Bind/Execute was never recorded (with max rows: PortalSuspended, then the completing Execute)", [][]fm{
		{&pgproto3.Parse{Query: "SELECT set_config('datestyle', 'SQL, DMY', false)"}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SHOW DateStyle"),
		{&pgproto3.Parse{Query: "SELECT set_config('datestyle', 'ISO, DMY', false)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SHOW DateStyle"),
	}},
	{"seed 97: session mode hung after a deferred START TRANSACTION's portal was described", [][]fm{
		q("SELECT 1"),
		{&pgproto3.Parse{Query: "START TRANSACTION READ ONLY"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"an Execute of no portal after a deferred BEGIN lost the block: the INSERT after it committed", [][]fm{
		q("SELECT 1"),
		q("BEGIN"),
		{&pgproto3.Execute{}, &pgproto3.Parse{Query: "INSERT INTO kv VALUES (9, 'x')"}, &pgproto3.Bind{DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		q("SELECT count(*) FROM kv"),
	}},
	{"a Describe of no portal after a deferred BEGIN", [][]fm{
		q("SELECT 1"),
		q("BEGIN"),
		{&pgproto3.Describe{ObjectType: 'P', Name: "nope"}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P', Name: "nope"}, &pgproto3.Sync{}}, // 25P02 in the aborted block (seed 124)
		q("SELECT count(*) FROM kv"),
		q("ROLLBACK"),
	}},
	{"Parse of BEGIN in an aborted block was answered ParseComplete", [][]fm{
		q("BEGIN; SELECT 1/0"),
		{&pgproto3.Parse{Name: "b", Query: "START TRANSACTION"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "r", Query: "ROLLBACK"}, &pgproto3.Bind{PreparedStatement: "r"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'S', Name: "b"}, &pgproto3.Sync{}},
	}},
	{"fuzz seed -23: a Parse the server answers in an aborted block leaves the block's unnamed portal; a taken name is 25P02 there", [][]fm{
		q("BEGIN; INSERT INTO kv VALUES (1, 'x')"),
		{&pgproto3.Parse{Name: "s3", Query: "SELECT count(*) FROM kv"}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		{&pgproto3.Parse{Name: "s3", Query: "SELECT 1"}, &pgproto3.Sync{}},
		q("BEGIN; SELECT 1/0"),
		{&pgproto3.Parse{Name: "s3", Query: "SELECT 2"}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"a Bind of BEGIN with a parameter was BindComplete", [][]fm{
		{&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("2")}}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SELECT 1"),
	}},
	{"seed 332 (fuzz): BEGIN by Parse/Bind/Execute while a BEGIN was deferred lacked WARNING 25001", [][]fm{
		q("BEGIN ISOLATION LEVEL REPEATABLE READ"),
		{&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"START TRANSACTION's tag was BEGIN", [][]fm{
		q("START TRANSACTION"),
		q("ROLLBACK"),
		{&pgproto3.Parse{Query: "START TRANSACTION READ ONLY"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"COMMIT and ROLLBACK by Parse/Bind/Execute outside a transaction lacked WARNING 25P01", [][]fm{
		{&pgproto3.Parse{Query: "ROLLBACK"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"an error of the router's after the server's in one pipeline: two errors", [][]fm{
		{&pgproto3.Parse{Name: "s1", Query: "SELECT 1"}, &pgproto3.Sync{}},
		{&pgproto3.Execute{Portal: "p1"}, &pgproto3.Parse{Name: "s1", Query: "SELECT 2"}, &pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"a query string in an aborted block got 0A000 (a query cannot end this transaction...), not 25P02", [][]fm{
		q("BEGIN; SELECT 1; SELECT count(*) FROM nosuch"),
		q("BEGIN; SELECT count(*) FROM kv; COMMIT"),
		q("ROLLBACK"),
	}},
	{"set15: a session SET among several statements of a query string was lost (SHOW gave the old value)", [][]fm{
		q("SET datestyle = 'ISO, DMY'; SELECT 1"),
		q("SHOW DateStyle"),
		q("SELECT 1; SET SESSION intervalstyle = 'sql_standard'"),
		q("SHOW intervalstyle"),
		q("BEGIN; SET datestyle = 'SQL, DMY'; ROLLBACK"),
		q("SHOW DateStyle"),
		q("SELECT set_config('datestyle', 'German', false); SELECT 1/0"),
		q("SHOW DateStyle"),
		q("SELECT set_config('datestyle', 'German', false); COMMIT; SELECT 1/0"),
		q("SHOW DateStyle"),
		q("SELECT 1; RESET intervalstyle"),
		q("SHOW intervalstyle"),
	}},
	// skip16: Parse and Close messages the server skipped after an error in a pipeline changed the router's
	// statements all the same.
	{"skip16: a skipped Parse of the unnamed statement ran at the next Bind (UPDATE 1) where PostgreSQL answers 08P01", [][]fm{
		{&pgproto3.Parse{Query: "SELECT 1 AS a"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s1", Query: "SELECT * FROM nosuch"}, &pgproto3.Parse{Query: "UPDATE kv SET v = v || '+' WHERE id = $1"}, &pgproto3.Sync{}},
		{&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SELECT v FROM kv WHERE id = 1"),
	}},
	{"skip16: a skipped Close S and Parse of a named statement made it the new one (26000 before)", [][]fm{
		{&pgproto3.Parse{Name: "s2", Query: "SELECT 2 AS b"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s1", Query: "SELECT * FROM nosuch"}, &pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Parse{Name: "s2", Query: "SELECT 3 AS c"}, &pgproto3.Parse{Name: "s3", Query: "SELECT 4"}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s2"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s3"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"skip16: a skipped Close S forgot the statement (26000 where PostgreSQL runs it)", [][]fm{
		{&pgproto3.Parse{Name: "s1", Query: "SELECT 1 AS a"}, &pgproto3.Parse{Query: "SELECT 2 AS b"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "x", Query: "SELECT * FROM nosuch"}, &pgproto3.Close{ObjectType: 'S', Name: "s1"}, &pgproto3.Close{ObjectType: 'S'}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Name: "s1", Query: "SELECT 3 AS c"}, &pgproto3.Sync{}},
	}},
	{"skip16: Describe P \"\" of a BEGIN's portal in an aborted block got 25P02 where PostgreSQL answers NoData (seeds 701, 124)", [][]fm{
		{&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Bind{Parameters: [][]byte{[]byte("4")}}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		{&pgproto3.Parse{Name: "s1", Query: "SHOW search_path"}, &pgproto3.Bind{DestinationPortal: "p2", PreparedStatement: "s1"}, &pgproto3.Execute{Portal: "p2"},
			&pgproto3.Parse{Name: "s3", Query: "START TRANSACTION READ ONLY"}, &pgproto3.Bind{PreparedStatement: "s3"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("SELECT * FROM nosuch"),
		{&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Close{ObjectType: 'P'}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	{"skip16: ROLLBACK TO by Parse/Bind/Execute in an aborted block no server holds got 25P02 at Bind, not 3B001 at Execute (seeds 152, 2293)", [][]fm{
		{&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "ROLLBACK TO SAVEPOINT s1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
	// portal16: the router's own unnamed portal in a block is closed only when
	// the client asks for portal "" without a Bind of its own.
	{"portal16: Execute and Describe of portal \"\" after the router's setup in a block, before and after the client's Bind, across Sync, after COMMIT", [][]fm{
		{&pgproto3.Parse{Name: "s", Query: "SELECT count(*) FROM kv"}, &pgproto3.Parse{Name: "s2", Query: "SELECT $1::int"}, &pgproto3.Sync{}},
		q("BEGIN"),
		{&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Sync{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("COMMIT"),
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("BEGIN"),
		{&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("COMMIT"),
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
	}},
	{"portal16: portal \"\" after the router's setup in an aborted block, and after a refused or skipped Bind of the client's", [][]fm{
		{&pgproto3.Parse{Name: "s", Query: "SELECT count(*) FROM kv"}, &pgproto3.Parse{Name: "s2", Query: "SELECT $1::int"}, &pgproto3.Sync{}},
		q("BEGIN"),
		{&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "SELECT nosuch"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		q("BEGIN"),
		{&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}},
		{&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		q("BEGIN"),
		{&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Parse{Query: "SELECT nosuch"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Sync{}},
		{&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		q("ROLLBACK"),
		q("BEGIN"),
		{&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s"}, &pgproto3.Execute{Portal: "p"}, &pgproto3.Sync{}},
		q("SELECT 1/0"),
		{&pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Sync{}, &pgproto3.Execute{}, &pgproto3.Sync{}},
		q("ROLLBACK"),
	}},
}

// TestDifferentialCases runs diffCases on PostgreSQL and the router in
// both pool modes.
func TestDifferentialCases(t *testing.T) {
	targets := diffTargets(t)
	for i, c := range diffCases {
		t.Run(c.name, func(t *testing.T) { diffCheckSeq(t, targets, int64(-1-i), c.seq) })
	}
}

// RESET ALL followed by more statements in one query is refused, nothing
// of it run: the statements after it would run without the shard's
// search_path (seeds 155 and 242: current_schema() was public, kv 42P01).
func TestResetAllThenMoreRefused(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
		c := tcConnect(t, s, "t3")
		if got, want := c.q("RESET ALL; SELECT current_schema()"), "E(0A000:RESET ALL followed by more statements in one query) ZI"; got != want {
			t.Errorf("%s mode: got %s, want %s", mode, got, want)
		}
		if got, want := c.q("BEGIN; RESET ALL; SELECT shard FROM whoami; ROLLBACK"), "E(0A000:RESET ALL followed by more statements in one query) ZI"; got != want {
			t.Errorf("%s mode: got %s, want %s", mode, got, want)
		}
		if got, want := c.q("RESET ALL"), "C(RESET) ZI"; got != want {
			t.Errorf("%s mode: alone: got %s, want %s", mode, got, want)
		}
		if got, want := c.q("SELECT current_schema()"), "D(shard_0003) C(SELECT 1) ZI"; got != want {
			t.Errorf("%s mode: after it: got %s, want %s", mode, got, want)
		}
	}
}
