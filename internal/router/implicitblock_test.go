package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The router's own statements must not change what the client's statements
// may do. From PostgreSQL 18 on (commit 24da0e7) a statement that follows
// an Execute without a Sync runs in an implicit transaction block, where
// VACUUM, a procedure that commits and the like fail (on every version
// VACUUM refuses to run after one in a pipeline). A setup the router sent
// as Bind/Execute before the client's Parse of DML put the client's next
// statement, whatever it was, in that block: VACUUM failed on 15 and 18, a
// committing CALL on 18, where the server itself runs both.
func TestFidelityNoImplicitBlockAfterSetup(t *testing.T) {
	committingProc(t)
	ins := &pgproto3.Parse{Name: "ins", Query: "INSERT INTO sink (body) VALUES ('x')"}
	vac := &pgproto3.Parse{Name: "vac", Query: "VACUUM whoami"}
	call := &pgproto3.Parse{Name: "call", Query: "CALL public.shard_after_commit(NULL)"}
	run := func(first []pgproto3.FrontendMessage, name string) []pgproto3.FrontendMessage {
		return append(first, &pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{})
	}
	for _, tt := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"parse DML then VACUUM", run([]pgproto3.FrontendMessage{ins, vac}, "vac")},
		{"parse DML then CALL", run([]pgproto3.FrontendMessage{ins, call}, "call")},
		{"describe DML then VACUUM", run([]pgproto3.FrontendMessage{ins, &pgproto3.Describe{ObjectType: 'S', Name: "ins"}, vac}, "vac")},
		{"describe DML then CALL", run([]pgproto3.FrontendMessage{ins, &pgproto3.Describe{ObjectType: 'S', Name: "ins"}, call}, "call")},
		{"VACUUM", run([]pgproto3.FrontendMessage{vac}, "vac")},
		{"CALL", run([]pgproto3.FrontendMessage{call}, "call")},
		{"query VACUUM", []pgproto3.FrontendMessage{&pgproto3.Query{String: "VACUUM whoami"}}},
		{"query CALL", []pgproto3.FrontendMessage{&pgproto3.Query{String: "CALL public.shard_after_commit(NULL)"}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			eachTarget(t, func(c *tc) string {
				c.send(tt.msgs...)
				got := c.recv(1)
				if strings.Contains(got, "E(") {
					t.Logf("answer: %s", got)
				}
				return got
			})
		})
	}
}

// PostgreSQL 18 reports search_path to clients (ParameterStatus) whenever
// it changes. The router sets and reverts its shard path with every
// transaction: a client sees none of it (as before 18: the path is the
// router's, and its SET is refused), unless it set its own path (session
// mode), which it then sees reported as the server reports it.
func TestSearchPathStatusHidden(t *testing.T) {
	d := tcDirect(t, 2)
	direct := d.q("SET search_path = public")
	reports := strings.Contains(direct, "S(search_path=public)")
	t.Logf("PostgreSQL: %s", direct)
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			c := tcConnect(t, s, "t2")
			for _, q := range []string{"SELECT shard FROM whoami", "BEGIN", "SELECT shard FROM whoami", "COMMIT", "SET pgtenant.tenant = 't4'", "SELECT shard FROM whoami", "SHOW search_path"} {
				if got := c.q(q); strings.Contains(got, "S(") {
					t.Errorf("%s: %s, want no ParameterStatus", q, got)
				}
			}
			if mode != PoolSession {
				return
			}
			got := c.q("SET search_path = public")
			if want := "C(SET) ZI"; reports {
				want = "C(SET) S(search_path=public) ZI"
				if got != want {
					t.Errorf("own search_path: %s, want %s (as PostgreSQL reports it)", got, want)
				}
			} else if got != want {
				t.Errorf("own search_path: %s, want %s", got, want)
			}
		})
	}
}

// The setup before a Parse of DML (pgbench -M extended, pgx's Exec and
// DescribeExec modes parse every statement) goes as Bind/Execute of one of
// the router's prepared setups (the session setup with a Sync of its own,
// or the local one when the whole pipeline is seen: see
// TestSetupBeforeParseInPipeline), not as a Query of text the server
// parses each time: with tenants on two shards of one node alternating on
// one backend, every transaction runs a prepared setup once, and each reads
// its own tenant's shard.
func TestSetupBeforeParsePrepared(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	runs := func() string {
		return c.q("SELECT coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name LIKE 'pgtenant\\_setup%'")
	}
	before := runs()
	for i := 0; i < 4; i++ {
		tenant, shard := "t4", "4"
		if i%2 == 1 {
			tenant, shard = "t2", "2"
		}
		c.send(&pgproto3.Parse{Query: "/* tenant: " + tenant + " */ SELECT shard FROM whoami"},
			&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if got, want := c.recv(1), "P B D("+shard+") C(SELECT 1) ZI"; got != want {
			t.Fatalf("transaction %d (%s): %s, want %s", i, tenant, got, want)
		}
	}
	after := runs()
	var b, a int
	if _, err := fmt.Sscanf(before, "D(%d)", &b); err != nil {
		t.Fatalf("count before: %s: %v", before, err)
	}
	if _, err := fmt.Sscanf(after, "D(%d)", &a); err != nil {
		t.Fatalf("count after: %s: %v", after, err)
	}
	if a-b != 4 {
		t.Errorf("prepared setups run: %d before, %d after 4 transactions (want 4 more)", b, a)
	}
}
