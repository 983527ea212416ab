package router

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// pcConnect is a pgconn connection through s for tenant.
func pcConnect(t *testing.T, s *Server, tenant string) *pgconn.PgConn {
	t.Helper()
	pc, err := pgconn.Connect(ctx(t), routerURL(s, tenant))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(ctx(t)) })
	return pc
}

// pcValue runs sql (simple protocol) and returns the first column of its
// first row ("<none>" without one).
func pcValue(t *testing.T, pc *pgconn.PgConn, sql string) string {
	t.Helper()
	res, err := pc.Exec(ctx(t), sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if len(res) == 0 || len(res[len(res)-1].Rows) == 0 {
		return "<none>"
	}
	return string(res[len(res)-1].Rows[0][0])
}

// execNamed runs the prepared statement name and returns its first value.
func execNamed(t *testing.T, pc *pgconn.PgConn, name string) string {
	t.Helper()
	res := pc.ExecPrepared(ctx(t), name, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatalf("execute %s: %v", name, res.Err)
	}
	return string(res.Rows[0][0])
}

// In session mode a client's statement keeps its name on the server
// (pg_prepared_statements shows it, as on a direct connection, and as
// pgbouncer does in session mode); transaction mode renames it.
func TestSessionStatementNames(t *testing.T) {
	for _, tc := range []struct {
		mode PoolMode
		want string
	}{{PoolSession, "fid_named"}, {PoolTransaction, "<none>"}} {
		t.Run(string(tc.mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: tc.mode}, nil)
			pc := pcConnect(t, s, "t1")
			if _, err := pc.Prepare(ctx(t), "fid_named", "SELECT shard FROM whoami", nil); err != nil {
				t.Fatal(err)
			}
			if got := execNamed(t, pc, "fid_named"); got != "1" {
				t.Fatalf("fid_named: %s, want 1", got)
			}
			q := "SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT shard FROM whoami' AND name = 'fid_named' AND NOT from_sql"
			if tc.mode == PoolTransaction {
				// Shared between the backend's clients: the router's names.
				q = "SELECT name FROM pg_prepared_statements WHERE name = 'fid_named'"
			}
			if got := pcValue(t, pc, q); got != tc.want {
				t.Fatalf("pg_prepared_statements: %s, want %s", got, tc.want)
			}
		})
	}
}

// In session mode a client name that starts with pgtenant_ (the router's
// own statements' prefix) is refused with 42939; transaction mode, which
// renames every statement, takes it.
func TestSessionStatementReservedName(t *testing.T) {
	for _, mode := range poolModes {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		pc := pcConnect(t, s, "t1")
		_, err := pc.Prepare(ctx(t), "pgtenant_setup", "SELECT shard FROM whoami", nil)
		if mode == PoolSession {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42939" || pe.Hint == "" {
				t.Fatalf("session mode, Parse pgtenant_setup: %v, want 42939 with a hint", err)
			}
			if err := pc.ExecPrepared(ctx(t), "pgtenant_setup", nil, nil, nil).Read().Err; pgCode(err) != "26000" {
				t.Fatalf("session mode, executing pgtenant_setup: %v, want 26000", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("transaction mode, Parse pgtenant_setup: %v", err)
		}
		if got := execNamed(t, pc, "pgtenant_setup"); got != "1" {
			t.Fatalf("transaction mode: %s, want 1", got)
		}
	}
}

// A session's named statements follow it to another tenant: on the same
// node (the same backend, re-planned by Postgres for the new search_path)
// and on another node (prepared again there under the client's name).
// Closed or deallocated (SQL DEALLOCATE too), a name can be prepared again
// with other SQL, which is what then runs.
func TestSessionStatementNamesAcrossTenants(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	pc := pcConnect(t, s, "t1") // shard 1, node b
	if _, err := pc.Prepare(ctx(t), "s1", "SELECT shard FROM whoami", nil); err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct{ tenant, want string }{{"t1", "1"}, {"t3", "3"}, {"t2", "2"}, {"t4", "4"}, {"t1", "1"}} {
		pcValue(t, pc, "SET pgtenant.tenant = '"+step.tenant+"'")
		if got := execNamed(t, pc, "s1"); got != step.want {
			t.Fatalf("s1 for tenant %s: %s, want %s", step.tenant, got, step.want)
		}
		if got := pcValue(t, pc, "SELECT count(*) FROM pg_prepared_statements WHERE name = 's1'"); got != "1" {
			t.Fatalf("tenant %s: %s statements named s1 on the backend, want 1", step.tenant, got)
		}
	}
	// SQL DEALLOCATE reaches the server; the name takes other SQL.
	pcValue(t, pc, "DEALLOCATE s1")
	if got := pcValue(t, pc, "SELECT count(*) FROM pg_prepared_statements WHERE name = 's1'"); got != "0" {
		t.Fatalf("after DEALLOCATE s1: %s statements named s1 on the backend, want 0", got)
	}
	if _, err := pc.Prepare(ctx(t), "s1", "SELECT 'again ' || shard FROM whoami", nil); err != nil {
		t.Fatal(err)
	}
	if got := execNamed(t, pc, "s1"); got != "again 1" {
		t.Fatalf("s1 prepared again: %s, want again 1", got)
	}
	// Close (the protocol's deallocate) too.
	if err := pc.Deallocate(ctx(t), "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx(t), "s1", "SELECT 'third ' || shard FROM whoami", nil); err != nil {
		t.Fatal(err)
	}
	if got := execNamed(t, pc, "s1"); got != "third 1" {
		t.Fatalf("s1 prepared a third time: %s, want third 1", got)
	}
}
