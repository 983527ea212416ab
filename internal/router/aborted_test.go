package router

// Aborted transactions, savepoints and pipelines with the router's
// settings (see sendSetup and noteEnding).

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The savepoint retry loop of ORMs: after ROLLBACK TO and a later error,
// the client's ROLLBACK TO / ROLLBACK runs (the router sends no setup into
// the aborted transaction, which the server would refuse with 25P02 and
// skip the client's statement with it). Both pool modes.
func TestAbortedSavepointRetryAfterError(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		for _, end := range []string{"ROLLBACK TO SAVEPOINT a", "ROLLBACK"} {
			t.Run(string(mode)+"/"+end, func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
				var c *tc
				if mode == PoolSession {
					c = tcConnect(t, s, "t2")
					t.Log(c.q("SELECT shard FROM whoami"))
					t.Log(c.q("SET pgtenant.tenant = 't4'"))
				} else {
					onShard2(t, s)
					c = tcConnect(t, s, "t4")
				}
				beginLocal(t, c)
				for _, step := range []struct{ q, want string }{
					{"SAVEPOINT a", "C(SAVEPOINT) ZT"},
					{"SELECT 1/0 FROM whoami", "E(22012:division by zero) ZE"},
					{"ROLLBACK TO SAVEPOINT a", "C(ROLLBACK) ZT"},
					{"SELECT shard FROM whoami", "D(4) C(SELECT 1) ZT"},
					{"SELECT 1/0 FROM whoami", "E(22012:division by zero) ZE"},
					{end, map[bool]string{true: "C(ROLLBACK) ZT", false: "C(ROLLBACK) ZI"}[strings.HasPrefix(end, "ROLLBACK TO")]},
				} {
					if got := c.q(step.q); got != step.want {
						t.Errorf("%s: got %s\nwant %s", step.q, got, step.want)
					}
				}
			})
		}
	}
}

// Session mode: a ROLLBACK bound to a named portal and executed after the
// next statement was bound (with a setup) undoes that setup too: the
// statements after it, and every later one of the session, still read the
// session's tenant's shard.
func TestAbortedSessionSetupBeforeEndingPortalRuns(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := sessionSwitchedToT4(t, s)
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "rb", Query: "ROLLBACK"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{}, // setup 1, in the implicit transaction
		&pgproto3.Bind{DestinationPortal: "r", PreparedStatement: "rb"}, // forgets setup 1
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},   // setup 2
		&pgproto3.Execute{Portal: "r"},                                // undoes setups 1 and 2
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{}, // no setup
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B D(4) C(SELECT 1) B B D(4) C(SELECT 1) C(ROLLBACK) B D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("pipeline: %s\nwant %s", got, want)
	}
	if got, want := c.q("SELECT shard FROM whoami"), "D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("after: %s\nwant %s", got, want)
	}
}

// Session mode, the same through parseNow: a Parse sent between the Bind
// and the Execute of an unnamed ROLLBACK portal.
func TestAbortedSessionParseSetupBeforeRollbackRuns(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := sessionSwitchedToT4(t, s)
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{}, // setup 1
		&pgproto3.Parse{Query: "ROLLBACK"}, &pgproto3.Bind{}, // forgets setup 1
		&pgproto3.Parse{Name: "sel2", Query: "SELECT shard, 2 FROM whoami"}, // setup 2 sent here
		&pgproto3.Execute{}, // the ROLLBACK undoes setups 1 and 2
		&pgproto3.Bind{PreparedStatement: "sel2"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P B D(4) C(SELECT 1) P B P C(ROLLBACK) B D(4,2) C(SELECT 1) ZI"; got != want {
		t.Errorf("pipeline: %s\nwant %s", got, want)
	}
	if got, want := c.q("SELECT shard FROM whoami"), "D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("after: %s\nwant %s", got, want)
	}
}

// A pipeline COMMIT; BEGIN; /* tenant: t4 */ SELECT leaves a transaction
// bound to t4: a statement without a hint in it runs for t4 (no 3D000 or
// 25001), as when the statements are sent as separate Sync rounds.
func TestAbortedTxnEndBoundOutlivesPipeline(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "")
	if got := c.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	if got := c.q("/* tenant: t4 */ SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
		t.Fatalf("hint: %s", got)
	}
	c.send(&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Parse{Name: "begin", Query: "BEGIN"},
		&pgproto3.Parse{Name: "sel", Query: "/* tenant: t4 */ SELECT shard FROM whoami"},
		&pgproto3.Bind{PreparedStatement: "commit"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "begin"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P P B C(COMMIT) B C(BEGIN) B D(4) C(SELECT 1) ZT"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
	if got, want := c.q("SELECT shard FROM whoami"), "D(4) C(SELECT 1) ZT"; got != want {
		t.Errorf("no hint in the new transaction: %s\nwant %s", got, want)
	}
	t.Log(c.q("ROLLBACK"))
}

// The row-level-security idiom SELECT set_config('app.user', ..., true) in
// a transaction, then an error: the client's ROLLBACK runs.
func TestAbortedSetConfigThenErrorRollback(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	for _, step := range []struct{ q, want string }{
		{"SELECT set_config('app.user_id', '42', true)", "D(42) C(SELECT 1) ZT"},
		{"SELECT 1/0 FROM whoami", "E(22012:division by zero) ZE"},
		{"ROLLBACK", "C(ROLLBACK) ZI"},
	} {
		if got := c.q(step.q); got != step.want {
			t.Errorf("%s: got %s\nwant %s", step.q, got, step.want)
		}
	}
	t.Log("ROLLBACK again:", c.q("ROLLBACK"))
}

// ROLLBACK TO SAVEPOINT sent as Parse/Bind/Execute/Sync (JDBC, pgx,
// Npgsql) in an aborted transaction runs.
func TestAbortedExtendedRollbackToInAbortedTxn(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	rbto := func() string {
		c.send(&pgproto3.Parse{Query: "ROLLBACK TO SAVEPOINT a"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		return c.recv(1)
	}
	if got := c.q("SAVEPOINT a"); got != "C(SAVEPOINT) ZT" {
		t.Fatalf("savepoint: %s", got)
	}
	t.Log(c.q("SELECT 1/0 FROM whoami"))
	if got, want := rbto(), "P B C(ROLLBACK) ZT"; got != want {
		t.Fatalf("first ROLLBACK TO: %s\nwant %s", got, want)
	}
	t.Log(c.q("SELECT 1/0 FROM whoami"))
	if got, want := rbto(), "P B C(ROLLBACK) ZT"; got != want {
		t.Errorf("second ROLLBACK TO: %s\nwant %s", got, want)
	}
	t.Log(c.q("ROLLBACK"))
}

// Session mode: a setup sent in the first statement of a pipeline that goes
// on with BEGIN, then ROLLBACK TO and an error: ROLLBACK runs.
func TestAbortedSessionSetupEachAbortedTxn(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := sessionSwitchedToT4(t, s)
	c.send(&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"},
		&pgproto3.Parse{Name: "begin", Query: "BEGIN"},
		&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "begin"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P B D(4) C(SELECT 1) B C(BEGIN) ZT"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
	for _, step := range []struct{ q, want string }{
		{"SAVEPOINT a", "C(SAVEPOINT) ZT"},
		{"ROLLBACK TO SAVEPOINT a", "C(ROLLBACK) ZT"},
		{"SELECT 1/0 FROM whoami", "E(22012:division by zero) ZE"},
		{"ROLLBACK", "C(ROLLBACK) ZI"},
	} {
		if got := c.q(step.q); got != step.want {
			t.Errorf("%s: got %s\nwant %s", step.q, got, step.want)
		}
	}
}

// setupRuns counts, through c's backend (pool size 1), how often the
// router's transaction-local setup statements have run on it.
func setupRuns(t *testing.T, c *tc) string {
	t.Helper()
	got := c.q("SELECT coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name LIKE 'pgtenant_setup_local%'")
	return got
}

// set_config of another setting in a transaction (the row-level-security
// idiom) costs no setup for the statements after it: the backend's count
// of setup executions grows by one for the whole transaction.
func TestAbortedSetConfigSetupPerStatement(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	before := setupRuns(t, c)
	c.q("SELECT set_config('app.user_id', '42', true)")
	for i := 0; i < 3; i++ {
		if got := c.q("SELECT shard FROM whoami"); got != "D(4) C(SELECT 1) ZT" {
			t.Fatalf("select: %s", got)
		}
	}
	after := setupRuns(t, c)
	c.q("ROLLBACK")
	if before != after {
		t.Errorf("local setups run: %s before set_config, %s after 3 SELECTs (want no more)", before, after)
	}
}

// The common paths send at most one setup per transaction: BEGIN, SELECT,
// SELECT, COMMIT as separate rounds, and a single DML statement per implicit
// transaction.
func TestAbortedCommonPathOneSetupPerTxn(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	count := func() string {
		// Runs as its own implicit transaction: one setup.
		return c.q("SELECT (SELECT shard FROM whoami), coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name LIKE 'pgtenant_setup_local%'")
	}
	t.Log("start:", count())
	for _, q := range []string{"BEGIN", "SELECT shard FROM whoami", "SELECT shard FROM whoami", "COMMIT"} {
		t.Log(q, c.q(q))
	}
	got1 := count()
	c.send(&pgproto3.Parse{Name: "ins", Query: "INSERT INTO sink(body) VALUES ('r5')"},
		&pgproto3.Bind{PreparedStatement: "ins"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	t.Log("dml:", c.recv(1))
	got2 := count()
	t.Log(got1, got2)
	// Each count is a transaction of its own and counts its own setup.
	if !strings.HasPrefix(got1, "D(4,") || !strings.HasPrefix(got2, "D(4,") {
		t.Fatalf("counts: %s %s", got1, got2)
	}
	n1, n2 := got1[len("D(4,"):strings.IndexByte(got1, ')')], got2[len("D(4,"):strings.IndexByte(got2, ')')]
	var a, b int
	for _, ch := range n1 {
		a = a*10 + int(ch-'0')
	}
	for _, ch := range n2 {
		b = b*10 + int(ch-'0')
	}
	// At most the DML transaction's and the counting one's; none when the
	// counting Query, outside a transaction block, left the shard's
	// settings on the backend's session (sendQuerySetup).
	if b-a > 2 {
		t.Errorf("setups between the counts: %d, want at most 2", b-a)
	}
}

// In an explicit transaction, a pipeline whose statement fails before its
// pipelined COMMIT (skipped by the server): the client's ROLLBACK then
// runs, on the first try.
func TestAbortedPipelineErrorBeforeCommitThenRollback(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	c.send(&pgproto3.Parse{Name: "bad", Query: "SELECT 1/0 FROM whoami"},
		&pgproto3.Parse{Name: "commit", Query: "COMMIT"},
		&pgproto3.Bind{PreparedStatement: "bad"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "commit"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P P E(22012:division by zero) ZE"; got != want {
		t.Fatalf("pipeline: %s\nwant %s", got, want)
	}
	for i := 0; i < 2; i++ {
		if got, want := c.q("ROLLBACK"), "C(ROLLBACK) ZI"; got != want {
			t.Errorf("ROLLBACK #%d: %s\nwant %s", i+1, got, want)
		} else {
			break
		}
	}
	if got, want := c.q("SELECT shard FROM whoami"), "D(4) C(SELECT 1) ZI"; got != want {
		t.Errorf("after: %s\nwant %s", got, want)
	}
}

// A whole transaction in one Sync round (a pgx batch, a libpq pipeline)
// with a failing statement: the client's ROLLBACK runs and the backend goes
// back to the pool.
func TestAbortedBatchTxnWithErrorThenRollback(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	c.send(&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "INSERT INTO sink(body) VALUES ('r5-batch')"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	if got, want := c.recv(1), "P B C(BEGIN) P B C(INSERT 0 1) P E(22012:division by zero) ZE"; got != want {
		t.Fatalf("batch: %s\nwant %s", got, want)
	}
	if got, want := c.q("ROLLBACK"), "C(ROLLBACK) ZI"; got != want {
		t.Errorf("ROLLBACK: %s\nwant %s", got, want)
	}
}

// An empty BEGIN ATOMIC body does not hide the transaction's END AND CHAIN
// after it: the chained transaction gets the local settings again.
func TestAbortedEmptyAtomicBodyEndAndChain(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	onShard2(t, s)
	c := tcConnect(t, s, "t4")
	beginLocal(t, c)
	if got, want := c.q("CREATE OR REPLACE PROCEDURE public.aborted_p() LANGUAGE sql BEGIN ATOMIC END; END AND CHAIN"), "C(CREATE PROCEDURE) C(COMMIT) ZT"; got != want {
		t.Fatalf("create: %s\nwant %s", got, want)
	}
	got := c.q("SELECT shard FROM whoami")
	c.q("ROLLBACK")
	if want := "D(4) C(SELECT 1) ZT"; got != want {
		t.Errorf("after END AND CHAIN: %s\nwant %s", got, want)
	}
}

// A pipelined ROLLBACK TO leaves the aborted state: the statement after it
// in the same pipeline (status still 'E' to the router) gets the settings a
// RESET ALL earlier in the transaction took away.
func TestAbortedRollbackToThenStatement(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			var c *tc
			if mode == PoolSession {
				c = sessionSwitchedToT4(t, s)
			} else {
				onShard2(t, s)
				c = tcConnect(t, s, "t4")
			}
			c.send(&pgproto3.Parse{Name: "rb", Query: "ROLLBACK TO SAVEPOINT a"},
				&pgproto3.Parse{Name: "sel", Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{})
			if got := c.recv(1); got != "P P ZI" {
				t.Fatalf("parse: %s", got)
			}
			beginLocal(t, c)
			for _, step := range []struct{ q, want string }{
				{"RESET ALL", "C(RESET) ZT"},
				{"SAVEPOINT a", "C(SAVEPOINT) ZT"},
				{"SELECT 1/0 FROM whoami", "E(22012:division by zero) ZE"},
			} {
				if got := c.q(step.q); got != step.want {
					t.Fatalf("%s: got %s\nwant %s", step.q, got, step.want)
				}
			}
			c.send(&pgproto3.Bind{PreparedStatement: "rb"}, &pgproto3.Execute{},
				&pgproto3.Bind{PreparedStatement: "sel"}, &pgproto3.Execute{},
				&pgproto3.Sync{})
			if got, want := c.recv(1), "B C(ROLLBACK) B D(4) C(SELECT 1) ZT"; got != want {
				t.Fatalf("pipeline: %s\nwant %s", got, want)
			}
			if got := c.q("ROLLBACK"); got != "C(ROLLBACK) ZI" {
				t.Fatalf("ROLLBACK: %s", got)
			}
		})
	}
}
