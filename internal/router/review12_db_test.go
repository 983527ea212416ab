package router

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestReview12HiddenDDLRefuse: with ddl refuse, schema changes the lexer
// misses run on one shard.
func TestReview12HiddenDDLRefuse(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLRefuse}, nil)
	const tenant = "t6"
	dropEverywhere(t, "review12_a", "review12_b")
	c := connect(t, s, tenant, pgx.QueryExecModeSimpleProtocol)
	for _, q := range []string{
		"WITH a AS (SELECT 1 AS x) SELECT * INTO review12_a FROM a",
		"EXPLAIN ANALYZE SELECT 1 AS x INTO review12_b",
	} {
		_, err := c.Exec(ctx(t), q)
		t.Logf("%s: %v", q, err)
	}
	for _, n := range []string{"review12_a", "review12_b"} {
		if got := tableSchemas(t, n); len(got) != 0 {
			t.Errorf("ddl refuse: %s created in %v", n, got)
		}
	}
}

// TestReview12RefusedDDLFlushesStatements: a DDL the router refuses (it
// never runs) still counts as a schema change: every session's shared
// statement names and reusable unnamed statements are dropped.
func TestReview12RefusedDDLFlushesStatements(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLRefuse}, nil)
	c := connect(t, s, "t6", pgx.QueryExecModeSimpleProtocol)
	before := s.stmtGen.Load()
	for i := 0; i < 3; i++ {
		if _, err := c.Exec(ctx(t), "CREATE TABLE review12_never (id int)"); pgCode(err) != "0A000" {
			t.Fatalf("CREATE TABLE: %v, want 0A000", err)
		}
	}
	if after := s.stmtGen.Load(); after != before {
		t.Errorf("3 refused DDL statements moved stmtGen %d -> %d (stmtIDs cleared as often)", before, after)
	}
}

// TestReview12UnlistenRolledBack: UNLISTEN * in a transaction the router
// deferred (BEGIN answered by the router: ss.status is still 'I') clears
// the listening flag; the ROLLBACK undoes the UNLISTEN on the server, and
// the client switches to t6 (same node, backend kept) while listening on
// t4's channel.
func TestReview12UnlistenRolledBack(t *testing.T) {
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

// TestReview12DiscardAllInDeferredBegin: a server refuses DISCARD ALL in a
// transaction block (25001); the router answers it itself after a BEGIN
// it deferred, and forgets the session's settings and statements.
func TestReview12DiscardAllInDeferredBegin(t *testing.T) {
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
