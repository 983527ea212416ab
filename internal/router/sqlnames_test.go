package router

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

// In session mode SQL PREPARE, EXECUTE and DEALLOCATE of a name starting
// with pgtenant_ (the router's own statements) are refused with 42939, as a
// Parse of one is, in every protocol and spelling the router can read; a
// U& name (which could spell one) and PREPARE or DEALLOCATE inside a DO
// block (unseen) with 0A000. The router's own statements keep working.
func TestSessionSQLReservedNames(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeDescribeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: PoolSession}, nil)
			c := connect(t, s, "t1", mode)
			for _, tc := range []struct{ sql, code string }{
				{"PREPARE pgtenant_x AS SELECT shard FROM whoami", "42939"},
				{`PREPARE "pgtenant_setup" (text, text) AS SELECT 1`, "42939"},
				{"EXECUTE pgtenant_setup('shard_0003', 't3')", "42939"},
				{"DEALLOCATE pgtenant_setup", "42939"},
				{"DEALLOCATE PREPARE \"pgtenant_discard_temp\"", "42939"},
				{"SELECT 1; DEALLOCATE pgtenant_setup", "42939"},
				{`PREPARE U&"pgtenant\005fx" AS SELECT 1`, "0A000"},
				{"DO $$ BEGIN EXECUTE 'DEALLOCATE ALL'; END $$", "0A000"},
				{"DO $$ BEGIN EXECUTE 'PREPARE q1 AS SELECT 1'; END $$", "0A000"},
			} {
				if mode != pgx.QueryExecModeSimpleProtocol && tc.sql == "SELECT 1; DEALLOCATE pgtenant_setup" {
					continue // one statement per Parse
				}
				if _, err := c.Exec(ctx(t), tc.sql); pgCode(err) != tc.code {
					t.Fatalf("%s: %v, want %s", tc.sql, err, tc.code)
				}
			}
			var n int
			if err := c.QueryRow(ctx(t), "SELECT count(*) FROM pg_prepared_statements WHERE name ILIKE 'pgtenant%' AND from_sql").Scan(&n); err != nil || n != 0 {
				t.Fatalf("SQL-prepared pgtenant_ statements on the backend: %d, %v", n, err)
			}
			// The router's statements are intact: another tenant on the same
			// node still gets its shard.
			var sh int
			if err := c.QueryRow(ctx(t), "/* tenant: t3 */ SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 3 {
				t.Fatalf("t3 after the refusals: %d, %v", sh, err)
			}
		})
	}
}

// In session mode a name prepared with SQL PREPARE and one prepared with
// Parse share the backend's namespace, as on a direct connection: preparing
// either way a name the other way already made is 42P05 (it used to
// replace the first statement silently), and after DEALLOCATE, Close, or
// DISCARD ALL the name is free again. Another node's backend starts without
// the SQL one (the session's statements there are protocol-level only).
func TestSessionSQLPrepareNamespace(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	pc := pcConnect(t, s, "t1")
	pcValue(t, pc, "PREPARE twoway AS SELECT 'sql ' || shard FROM whoami")
	if _, err := pc.Prepare(ctx(t), "twoway", "SELECT 'parse ' || shard FROM whoami", nil); pgCode(err) != "42P05" {
		t.Fatalf("Parse of a name SQL PREPARE made: %v, want 42P05", err)
	}
	if got := pcValue(t, pc, "EXECUTE twoway"); got != "sql 1" {
		t.Fatalf("EXECUTE twoway: %s, want sql 1 (the SQL statement, not replaced)", got)
	}
	// A failed PREPARE makes no name.
	if _, err := pc.Exec(ctx(t), "PREPARE broken AS SELECT * FROM no_such_table").ReadAll(); pgCode(err) != "42P01" {
		t.Fatalf("PREPARE of a missing table: %v, want 42P01", err)
	}
	if _, err := pc.Prepare(ctx(t), "broken", "SELECT 'parse ' || shard FROM whoami", nil); err != nil {
		t.Fatalf("Parse of the name a failed PREPARE did not make: %v", err)
	}
	// The reverse: Parse first, then SQL PREPARE.
	if _, err := pc.Prepare(ctx(t), "viaparse", "SELECT 'parse ' || shard FROM whoami", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx(t), "PREPARE viaparse AS SELECT 'sql'").ReadAll(); pgCode(err) != "42P05" {
		t.Fatalf("SQL PREPARE of a name Parse made: %v, want 42P05", err)
	}
	if got := execNamed(t, pc, "viaparse"); got != "parse 1" {
		t.Fatalf("viaparse: %s, want parse 1", got)
	}
	// Freed by DEALLOCATE, by the protocol's Close, by DISCARD ALL.
	pcValue(t, pc, "DEALLOCATE twoway")
	if _, err := pc.Prepare(ctx(t), "twoway", "SELECT 'parse ' || shard FROM whoami", nil); err != nil {
		t.Fatalf("Parse after DEALLOCATE: %v", err)
	}
	if got := execNamed(t, pc, "twoway"); got != "parse 1" {
		t.Fatalf("twoway after DEALLOCATE and Parse: %s, want parse 1", got)
	}
	pcValue(t, pc, "PREPARE closed AS SELECT 1")
	if err := pc.Deallocate(ctx(t), "closed"); err != nil {
		t.Fatal(err)
	}
	if got := pcValue(t, pc, "SELECT count(*) FROM pg_prepared_statements WHERE name = 'closed'"); got != "0" {
		t.Fatalf("after Close of a SQL-prepared statement: %s on the backend, want 0", got)
	}
	if _, err := pc.Prepare(ctx(t), "closed", "SELECT 2", nil); err != nil {
		t.Fatalf("Parse after Close: %v", err)
	}
	pcValue(t, pc, "PREPARE gone AS SELECT 1")
	pcValue(t, pc, "DISCARD ALL")
	if _, err := pc.Prepare(ctx(t), "gone", "SELECT 2", nil); err != nil {
		t.Fatalf("Parse after DISCARD ALL: %v", err)
	}
	// Another node: the SQL statement stayed on the old backend's reset.
	pcValue(t, pc, "PREPARE moved AS SELECT 1")
	pcValue(t, pc, "SET pgtenant.tenant = 't2'") // shard 2, node a
	if got := pcValue(t, pc, "SELECT shard FROM whoami"); got != "2" {
		t.Fatalf("t2: shard %s", got)
	}
	if _, err := pc.Prepare(ctx(t), "moved", "SELECT 'parse ' || shard FROM whoami", nil); err != nil {
		t.Fatalf("Parse on another node's backend: %v", err)
	}
	if got := execNamed(t, pc, "moved"); got != "parse 2" {
		t.Fatalf("moved on node a: %s, want parse 2", got)
	}
}
