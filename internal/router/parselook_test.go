package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A Parse of DML whose whole pipeline the router sees (Parse, Bind,
// Describe, Execute, Sync in one write, as pgbench -M extended sends it)
// gets the transaction-local setup ahead of it, without a Sync of the
// router's own: one server transaction per client transaction. A Parse
// followed by a Sync alone, a pipeline that binds another statement, or
// one whose Sync is not there yet, still gets the session setup and a Sync
// of the router's own (syncSetup). Either way each
// transaction reads its own tenant's shard, and the local settings end
// with the transaction (the backend's search_path is back to the node's
// default for the next one).
func TestSetupBeforeParseInPipeline(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	count := func(names string) int {
		t.Helper()
		got := c.q("SELECT coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name IN (" + names + ")")
		var n int
		if _, err := fmt.Sscanf(got, "D(%d)", &n); err != nil {
			t.Fatalf("count: %s: %v", got, err)
		}
		return n
	}
	const local, session = "'pgtenant_setup_local', 'pgtenant_setup_local_tenant'", "'pgtenant_setup', 'pgtenant_setup_tenant'"
	// Statements of each tenant for the pipelines that bind another one
	// (after the whole pipeline case: their Parse leaves session settings).
	parseOthers := func() {
		for _, tenant := range []string{"t2", "t4"} {
			c.send(&pgproto3.Parse{Name: "other_" + tenant, Query: "/* tenant: " + tenant + " */ SELECT 1"}, &pgproto3.Sync{})
			if got := c.recv(1); !strings.HasSuffix(got, "ZI") || strings.Contains(got, "E(") {
				t.Fatalf("parse other_%s: %s", tenant, got)
			}
		}
	}
	type msgs = []pgproto3.FrontendMessage
	for _, tt := range []struct {
		name   string
		rounds func(parse *pgproto3.Parse, tenant string) []msgs
		// wantSess is at most (none when the backend's session settings
		// already are the tenant's); < 0: any count.
		wantLocal, wantSess int
	}{
		{"whole pipeline", func(p *pgproto3.Parse, _ string) []msgs {
			return []msgs{{p, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}}}
		}, 1, 0},
		{"parse, then bind later", func(p *pgproto3.Parse, _ string) []msgs {
			return []msgs{{p, &pgproto3.Sync{}}, {&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}}
		}, 0, 1},
		{"another statement bound", func(p *pgproto3.Parse, tenant string) []msgs {
			return []msgs{{p, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Bind{PreparedStatement: "other_" + tenant}, &pgproto3.Execute{}, &pgproto3.Sync{}}}
		}, 0, 1},
		{"another statement described", func(p *pgproto3.Parse, tenant string) []msgs {
			return []msgs{{p, &pgproto3.Describe{ObjectType: 'S', Name: "other_" + tenant}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}}}
		}, 0, 1},
		{"no sync yet", func(p *pgproto3.Parse, _ string) []msgs {
			return []msgs{{p, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{}}, {&pgproto3.Sync{}}}
		}, 0, -1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "another statement bound" {
				parseOthers()
			}
			for i := 0; i < 4; i++ {
				tenant, shard := "t4", "4"
				if i%2 == 1 {
					tenant, shard = "t2", "2"
				}
				l0, s0 := count(local), count(session)
				var got string
				for _, m := range tt.rounds(&pgproto3.Parse{Query: "/* tenant: " + tenant + " */ SELECT shard FROM whoami"}, tenant) {
					c.send(m...)
					if _, ok := m[len(m)-1].(*pgproto3.Sync); ok {
						got += c.recv(1)
					}
				}
				if want := "D(" + shard + ") C(SELECT 1)"; !strings.Contains(got, want) || !strings.HasSuffix(got, "ZI") || strings.Contains(got, "E(") {
					t.Fatalf("transaction %d (%s): %s, want %s and ZI", i, tenant, got, want)
				}
				// count runs a transaction of its own, with a setup of the
				// simple protocol's (SET LOCAL text), counted in neither.
				l1, s1 := count(local), count(session)
				if l1-l0 != tt.wantLocal || (tt.wantSess >= 0 && s1-s0 > tt.wantSess) {
					t.Errorf("transaction %d (%s): local setups %d, session setups %d; want %d and at most %d", i, tenant, l1-l0, s1-s0, tt.wantLocal, tt.wantSess)
				}
			}
		})
	}
}
