package router

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Transaction mode: a session-level advisory lock would stay with the
// backend after the transaction, held for whichever client gets the backend
// next (a hostile-client trial: client b's backend held client a's lock).
// The lock functions are refused (0A000 with a hint) in every spelling the
// router reads, DO bodies too; the transaction-level ones work. Session mode
// takes them (DISCARD ALL releases them when the client leaves).
func TestTransactionModeSessionLocks(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			a := connect(t, s, "t1", mode)
			for _, q := range []string{
				"SELECT pg_advisory_lock(42)",
				"SELECT pg_catalog.pg_try_advisory_lock(42, 1)",
				`SELECT "pg_advisory_lock_shared"(42)`,
				"SELECT PG_TRY_ADVISORY_LOCK_SHARED(42) FROM whoami",
				"DO $$ BEGIN PERFORM pg_advisory_lock(42); END $$",
			} {
				if _, err := a.Exec(ctx(t), q); pgCode(err) != "0A000" {
					t.Fatalf("%s in transaction mode: %v, want 0A000", q, err)
				}
			}
			var ok bool
			if err := a.QueryRow(ctx(t), "SELECT pg_try_advisory_xact_lock(42)").Scan(&ok); err != nil || !ok {
				t.Fatalf("pg_try_advisory_xact_lock: %v %v", ok, err)
			}
			b := connect(t, s, "t3", mode) // same node, the pool's one backend
			var n int
			if err := b.QueryRow(ctx(t), "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()").Scan(&n); err != nil || n != 0 {
				t.Fatalf("advisory locks on the backend client b got: %d, %v", n, err)
			}
		})
	}
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx(t), "SELECT pg_advisory_lock(42)"); err != nil {
		t.Fatalf("session mode: %v", err)
	}
	if _, err := c.Exec(ctx(t), "SELECT pg_advisory_unlock(42)"); err != nil {
		t.Fatal(err)
	}
}

// A tenant id written as an E'...' string with escapes is the id the server
// would decode (it was read with only \n, \t and \r decoded: E'\x74\x31'
// named tenant "x74x31"), and one that decodes to invalid UTF-8 is 22023.
func TestTenantValueEscapes(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm}, nil)
			pc := pcConnect(t, s, "")
			for _, tc := range []struct{ set, want string }{
				{`SET pgtenant.tenant = E'\x74\x31'`, "1"},
				{`SELECT set_config('pgtenant.tenant', E'\164\63', false)`, "3"},
				{`SET pgtenant.tenant = e't\u0035'`, "5"},
			} {
				pcValue(t, pc, tc.set)
				if got := pcValue(t, pc, "SELECT shard FROM whoami"); got != tc.want {
					t.Fatalf("%s: shard %s, want %s", tc.set, got, tc.want)
				}
			}
			if _, err := pc.Exec(ctx(t), `SET pgtenant.tenant = E'\xff'`).ReadAll(); pgCode(err) != "22023" {
				t.Fatalf("a tenant id of invalid UTF-8: %v, want 22023", err)
			}
		})
	}
}

// PostgreSQL 16 and later read a vertical tab as whitespace: SET\vrole is SET
// role there. The router's lexers read it so too, and refuse the settings it
// owns written with one (it took SET\v... for some other statement: on
// PostgreSQL 18 a client under row-level security could set
// pgtenant.tenant_id and read another tenant's rows).
func TestVerticalTabIsWhitespace(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm}, nil)
			pc := pcConnect(t, s, "t1")
			for _, q := range []string{"SET\vpgtenant.tenant_id = 't5'", "SET\vLOCAL\vrole = postgres", "SELECT 1;\vRESET\vsearch_path", "SET\vstandard_conforming_strings = off"} {
				if pm == PoolSession && strings.Contains(q, "search_path") {
					continue // the client's own search_path in session mode
				}
				if _, err := pc.Exec(ctx(t), q).ReadAll(); pgCode(err) != "0A000" {
					t.Fatalf("%q: %v, want 0A000", q, err)
				}
			}
			if got := pcValue(t, pc, "SELECT current_setting('pgtenant.tenant_id')"); got != "t1" {
				t.Fatalf("tenant id after the refusals: %s, want t1", got)
			}
		})
	}
}
