package router

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// set15Check reads the settings the cases change, in a query of its own.
const set15Check = "SELECT current_setting('datestyle') || ' / ' || current_setting('intervalstyle')"

// set15Cases are query strings (each step one simple Query) that set,
// reset or undo session settings, alone and among other statements of one
// string; what a later query sees must be what PostgreSQL keeps.
var set15Cases = []struct {
	name  string
	steps []string
	want  string // set15Check afterwards, as on PostgreSQL
}{
	{"set first", []string{"SET datestyle = 'ISO, DMY'; SELECT 1"}, "ISO, DMY / postgres"},
	{"set last", []string{"SELECT 1; SET datestyle = 'ISO, DMY'"}, "ISO, DMY / postgres"},
	{"set middle", []string{"SELECT 1; SET datestyle = 'ISO, DMY'; SELECT 2"}, "ISO, DMY / postgres"},
	{"set session", []string{"SET SESSION datestyle TO 'ISO, DMY'; SELECT 1"}, "ISO, DMY / postgres"},
	{"tenant first", []string{"SET pgtenant.tenant = 't4'; SET datestyle = 'ISO, DMY'; SELECT 1"}, "ISO, DMY / postgres"},
	{"tenant first, set after", []string{"SET pgtenant.tenant = 't4'; SELECT 1; SET datestyle = 'ISO, DMY'"}, "ISO, DMY / postgres"},
	{"two sets", []string{"SET datestyle = 'ISO, DMY'; SET intervalstyle = 'sql_standard'"}, "ISO, DMY / sql_standard"},
	{"set then set again", []string{"SET datestyle = 'ISO, DMY'; SELECT 1; SET datestyle = 'SQL, DMY'"}, "SQL, DMY / postgres"},
	{"empty statements", []string{"SELECT 1;; /* c */ ; SET datestyle = 'ISO, DMY';"}, "ISO, DMY / postgres"},
	{"comment in set", []string{"SET datestyle = 'ISO, DMY' -- c\n; SELECT 1", "SET intervalstyle = 'sql_standard'"}, "ISO, DMY / sql_standard"},
	{"comment in lone set", []string{"SET datestyle = 'ISO, DMY' -- c", "SET intervalstyle = 'sql_standard'"}, "ISO, DMY / sql_standard"},
	{"semicolon in a string", []string{"SELECT ';'; SET datestyle = 'ISO, DMY'; SELECT $$;$$"}, "ISO, DMY / postgres"},
	{"begin atomic before", []string{
		"CREATE OR REPLACE FUNCTION public.f15() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END; SET datestyle = 'ISO, DMY'; SELECT public.f15()"},
		"ISO, DMY / postgres"},
	{"reset later", []string{"SET datestyle = 'ISO, DMY'", "SELECT 1; RESET datestyle"}, "ISO, MDY / postgres"},
	{"set to default later", []string{"SET datestyle = 'ISO, DMY'", "SELECT 1; SET datestyle TO DEFAULT"}, "ISO, MDY / postgres"},
	{"reset all last", []string{"SET datestyle = 'ISO, DMY'", "SELECT 1; RESET ALL"}, "ISO, MDY / postgres"},
	{"set_config", []string{"SELECT set_config('datestyle', 'ISO, DMY', false); SELECT 1"}, "ISO, DMY / postgres"},
	{"set_config alone", []string{"SELECT set_config('datestyle', 'ISO, DMY', false)"}, "ISO, DMY / postgres"},
	{"set_config local", []string{"SELECT set_config('datestyle', 'ISO, DMY', true); SELECT 1"}, "ISO, MDY / postgres"},
	// Failures: nothing recorded.
	{"bad value", []string{"SET datestyle = 'bogus'; SELECT 1"}, "ISO, MDY / postgres"},
	{"bad value after set", []string{"SET intervalstyle = 'sql_standard'; SET datestyle = 'bogus'"}, "ISO, MDY / postgres"},
	{"later statement fails", []string{"SET datestyle = 'ISO, DMY'; SELECT 1/0"}, "ISO, MDY / postgres"},
	{"block rolled back", []string{"BEGIN; SET datestyle = 'ISO, DMY'; ROLLBACK"}, "ISO, MDY / postgres"},
	{"block committed", []string{"BEGIN; SET datestyle = 'ISO, DMY'; COMMIT"}, "ISO, DMY / postgres"},
	{"block open then rollback", []string{"BEGIN; SET datestyle = 'ISO, DMY'", "ROLLBACK"}, "ISO, MDY / postgres"},
	{"block open then commit", []string{"BEGIN; SET datestyle = 'ISO, DMY'", "COMMIT"}, "ISO, DMY / postgres"},
	{"block open then error", []string{"BEGIN; SET datestyle = 'ISO, DMY'", "SELECT 1/0", "COMMIT"}, "ISO, MDY / postgres"},
	{"in a block then rollback", []string{"BEGIN", "SELECT 1; SET datestyle = 'ISO, DMY'", "ROLLBACK"}, "ISO, MDY / postgres"},
	{"in a block then commit", []string{"BEGIN", "SELECT 1; SET datestyle = 'ISO, DMY'", "COMMIT"}, "ISO, DMY / postgres"},
	{"implicit rollback", []string{"SET datestyle = 'ISO, DMY'; ROLLBACK"}, "ISO, MDY / postgres"},
	{"commit then failure", []string{"SET datestyle = 'ISO, DMY'; COMMIT; SELECT 1/0"}, "ISO, DMY / postgres"},
	{"set local", []string{"SET LOCAL datestyle = 'ISO, DMY'; SELECT 1"}, "ISO, MDY / postgres"},
	{"set local in block", []string{"BEGIN; SET LOCAL datestyle = 'ISO, DMY'; COMMIT"}, "ISO, MDY / postgres"},
	// set16: a savepoint made, released or rolled back to in a string of
	// no SET is seen (it was not: ROLLBACK TO dropped every SET of the
	// transaction); a RESET in a block the router has not begun on a
	// backend yet (deferred BEGIN) is the transaction's.
	{"savepoint in a string", []string{"BEGIN; SET datestyle = 'ISO, DMY'", "SELECT 1; SAVEPOINT a",
		"SET intervalstyle = 'sql_standard'", "ROLLBACK TO a", "COMMIT"}, "ISO, DMY / postgres"},
	{"savepoint first in a string", []string{"BEGIN", "SET datestyle = 'ISO, DMY'", "SAVEPOINT a; SELECT 1",
		"SET intervalstyle = 'sql_standard'", "ROLLBACK TO SAVEPOINT a", "COMMIT"}, "ISO, DMY / postgres"},
	{"rollback to in a string", []string{"BEGIN", "SET datestyle = 'ISO, DMY'", "SAVEPOINT a",
		"SET intervalstyle = 'sql_standard'", "SELECT 1; ROLLBACK TO a", "COMMIT"}, "ISO, DMY / postgres"},
	{"rollback to first in a string", []string{"BEGIN", "SET datestyle = 'ISO, DMY'", "SAVEPOINT a",
		"SET intervalstyle = 'sql_standard'", "ROLLBACK TO a; SELECT 1", "COMMIT"}, "ISO, DMY / postgres"},
	{"release in a string", []string{"BEGIN", "SAVEPOINT a", "SET datestyle = 'ISO, DMY'", "SAVEPOINT b",
		"SET intervalstyle = 'sql_standard'", "SELECT 1; RELEASE b", "ROLLBACK TO a", "COMMIT"}, "ISO, MDY / postgres"},
	{"reset in a deferred block rolled back", []string{"SET datestyle = 'ISO, DMY'", "BEGIN", "RESET datestyle", "ROLLBACK"}, "ISO, DMY / postgres"},
	{"reset in a deferred block committed", []string{"SET datestyle = 'ISO, DMY'", "BEGIN", "RESET datestyle", "COMMIT"}, "ISO, MDY / postgres"},
	{"savepoint then error then rollback to", []string{"BEGIN; SET datestyle = 'ISO, DMY'", "SELECT 1; SAVEPOINT a",
		"SET intervalstyle = 'sql_standard'", "SELECT 1/0", "ROLLBACK TO a", "COMMIT"}, "ISO, DMY / postgres"},
}

// TestSet15MultiStatementSet checks that a session SET (RESET, SET
// SESSION, set_config(..., false)) among several statements of one query
// string is kept for the client's later transactions as PostgreSQL keeps
// it, in both pool modes, and that one the server rejects or rolls back is
// not: each case runs on PostgreSQL directly and through the router, step
// by step, with the same SQLSTATEs and the same settings afterwards.
func TestSet15MultiStatementSet(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		for _, tc := range set15Cases {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) {
				steps := make([]set16Step, len(tc.steps))
				for i, sql := range tc.steps {
					steps[i] = set16Step{sql: sql}
				}
				set16Run(t, s, mode, "t3", steps, tc.want)
			})
		}
	}
}

// TestSet15Refused checks the forms the router refuses among several
// statements as it refuses (or answers) them alone: nothing of the string
// runs, nothing is recorded.
func TestSet15Refused(t *testing.T) {
	cases := []struct {
		mode  PoolMode
		sql   string
		code  string
		after string // SHOW pgtenant.tenant afterwards
	}{
		{PoolTransaction, "SELECT 1; SET search_path = public", "0A000", "t3"},
		{PoolSession, "SELECT 1; SET search_path = public", "0A000", "t3"},
		{PoolSession, "SET search_path = public; SELECT 1", "0A000", "t3"},
		{PoolSession, "SELECT 1; RESET search_path", "0A000", "t3"},
		{PoolSession, "SELECT 1; SELECT set_config('search_path', 'public', false)", "0A000", "t3"},
		{PoolTransaction, "SELECT 1; SET pgtenant.tenant = 't4'", "0A000", "t3"},
		{PoolSession, "SELECT 1; SET pgtenant.tenant = 't4'", "0A000", "t3"},
		{PoolTransaction, "SET pgtenant.tenant = 't4'; SELECT 1", "", "t4"},
		{PoolSession, "SET pgtenant.tenant = 't4'; SELECT 1", "", "t4"},
	}
	for _, tc := range cases {
		t.Run(string(tc.mode)+"/"+tc.sql, func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: tc.mode}, nil)
			c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			_, err := c.PgConn().Exec(ctx(t), tc.sql).ReadAll()
			if got := pgCode(err); got != tc.code {
				t.Fatalf("%q: %q (%v), want %q", tc.sql, got, err, tc.code)
			}
			if err != nil {
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Hint == "" {
					t.Errorf("%q: no hint in %v", tc.sql, err)
				} else if strings.Contains(tc.sql, "search_path") && !strings.Contains(pe.Hint, "not among other statements of one query") {
					t.Errorf("%q: the hint does not say why a string may not set search_path: %q", tc.sql, pe.Hint) // (set16)
				}
			}
			var tenant, path string
			if err := c.QueryRow(ctx(t), "SHOW pgtenant.tenant").Scan(&tenant); err != nil {
				t.Fatal(err)
			}
			if tenant != tc.after {
				t.Errorf("tenant %q, want %q", tenant, tc.after)
			}
			if err := c.QueryRow(ctx(t), "SELECT current_setting('search_path')").Scan(&path); err != nil {
				t.Fatal(err)
			}
			if want := "shard_000" + string(rune('0'+shardOf(tenant))) + ", public, pg_temp"; path != want {
				t.Errorf("search_path %q, want %q", path, want)
			}
		})
	}
}

// TestSet15Split checks splitStatements against the server's splitting
// (one CommandComplete per statement that is not empty) and
// sessionSetConfig's forms, without a server.
func TestSet15Split(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want []string
	}{
		{"SELECT 1", []string{"SELECT 1"}},
		{"SELECT 1;; /* c; */ ; SET a = 1;", []string{"SELECT 1", "SET a = 1"}},
		{"SELECT ';'; SELECT $x$;$x$; SELECT \"a;b\"; SELECT E'\\';'", []string{"SELECT ';'", "SELECT $x$;$x$", "SELECT \"a;b\"", "SELECT E'\\';'"}},
		{"-- a;\nSELECT 1 -- b;\n; SET a = 1", []string{"-- a;\nSELECT 1 -- b;", "SET a = 1"}},
		{"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END; SET a = 1",
			[]string{"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 1 END; END", "SET a = 1"}},
		{"CREATE PROCEDURE p() BEGIN ATOMIC END; END; SET a = 1", []string{"CREATE PROCEDURE p() BEGIN ATOMIC END", "END", "SET a = 1"}},
		{"/* only */ ; -- comments", nil},
	} {
		var got []string
		splitStatements(tc.sql, func(s, _ string, _ bool) { got = append(got, strings.TrimSpace(s)) })
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%q: got %q, want %q", tc.sql, got, tc.want)
		}
	}
	for _, tc := range []struct {
		stmt string
		name string
	}{
		{"SELECT set_config('DateStyle', 'ISO, DMY', false)", "datestyle"},
		{"select pg_catalog.set_config('x.y', '1', 'off')", "x.y"},
		{"SELECT set_config('datestyle', 'ISO, DMY', true)", ""},
		{"SELECT set_config('datestyle', 'ISO, DMY', $1)", ""},
		{"SELECT set_config('datestyle', $1, false)", ""},
		{"SELECT set_config('search_path', 'public', false)", ""},
		{"SELECT set_config('role', 'x', false)", ""},
		{"SELECT set_config('pgtenant.tenant', 't1', false)", ""},
		{"SELECT set_config(E'datestyle', 'ISO, DMY', false)", ""},
		{"SELECT set_config('datestyle', 'ISO, DMY', false), 1", ""},
	} {
		name, ok := sessionSetConfig(tc.stmt)
		if ok != (tc.name != "") || name != tc.name {
			t.Errorf("%q: got %q %v, want %q", tc.stmt, name, ok, tc.name)
		}
	}
}

// BenchmarkSet15Scan compares the extra scan a query string with a
// set_config or SET among several statements now gets (stringSetsOf)
// with classify of the same string, which every Query gets.
func BenchmarkSet15Scan(b *testing.B) {
	const rls = "SELECT set_config('app.user_id', '42', true); SELECT id, v FROM kv WHERE id = 7"
	b.Run("classify", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			classify(rls)
		}
	})
	b.Run("stringSetsOf", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			stringSetsOf(rls)
		}
	})
}
