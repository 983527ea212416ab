package router

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// set16Step is one step of a set16 case: a simple Query (args nil) or a
// Parse/Bind/Execute of sql with args, in text format or, with binary,
// binary format of type oid.
type set16Step struct {
	sql    string
	args   []string
	binary bool
	oid    uint32
}

// set16Cases are session settings made by Parse/Bind/Execute, checked with
// set15Check as on PostgreSQL.
var set16Cases = []struct {
	name  string
	steps []set16Step
	want  string
}{
	{"set_config param", []set16Step{{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}}}, "ISO, DMY / postgres"},
	{"set_config param binary text", []set16Step{{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}, binary: true, oid: 25}},
		"ISO, DMY / postgres"},
	{"set_config param binary varchar", []set16Step{{sql: "SELECT pg_catalog.set_config('IntervalStyle', $1, 'off')", args: []string{"sql_standard"}, binary: true, oid: 1043}},
		"ISO, MDY / sql_standard"},
	{"set_config param, quote in value", []set16Step{{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}},
		{sql: "SELECT set_config('application_name', $1, false)", args: []string{"it's"}}}, "ISO, DMY / postgres"},
	{"set_config param bad value", []set16Step{{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"bogus"}}}, "ISO, MDY / postgres"},
	{"set_config param in a block rolled back", []set16Step{{sql: "BEGIN"},
		{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}}, {sql: "ROLLBACK"}}, "ISO, MDY / postgres"},
	{"set_config param in a block committed", []set16Step{{sql: "BEGIN"},
		{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}}, {sql: "COMMIT"}}, "ISO, DMY / postgres"},
	{"set_config param after savepoint rolled back to", []set16Step{{sql: "BEGIN"}, {sql: "SAVEPOINT a"},
		{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}}, {sql: "ROLLBACK TO a"}, {sql: "COMMIT"}},
		"ISO, MDY / postgres"},
	// Item 4 of set16: each against PostgreSQL.
	{"set_config param local in a block", []set16Step{{sql: "BEGIN"},
		{sql: "SELECT set_config('datestyle', $1, true)", args: []string{"ISO, DMY"}}, {sql: "COMMIT"}}, "ISO, MDY / postgres"},
	{"set_config literal local in a block", []set16Step{{sql: "BEGIN"},
		{sql: "SELECT set_config('datestyle', 'ISO, DMY', true)", args: []string{}}, {sql: "COMMIT"}}, "ISO, MDY / postgres"},
	{"reset by extended", []set16Step{{sql: "SET datestyle = 'ISO, DMY'"}, {sql: "RESET datestyle", args: []string{}}}, "ISO, MDY / postgres"},
	{"reset by extended in a block rolled back", []set16Step{{sql: "SET datestyle = 'ISO, DMY'"}, {sql: "BEGIN"},
		{sql: "RESET datestyle", args: []string{}}, {sql: "ROLLBACK"}}, "ISO, DMY / postgres"},
	{"set to default by extended", []set16Step{{sql: "SET datestyle = 'ISO, DMY'"}, {sql: "SET datestyle TO DEFAULT", args: []string{}}},
		"ISO, MDY / postgres"},
	{"set = default", []set16Step{{sql: "SET intervalstyle = 'sql_standard'"}, {sql: "SET intervalstyle = DEFAULT"}}, "ISO, MDY / postgres"},
	{"set to default in a block committed", []set16Step{{sql: "SET datestyle = 'ISO, DMY'"}, {sql: "BEGIN"},
		{sql: "SET datestyle TO DEFAULT", args: []string{}}, {sql: "COMMIT"}}, "ISO, MDY / postgres"},
}

// TestSet16ExtendedSet checks that a session setting made by
// Parse/Bind/Execute (set_config with the value as a parameter, RESET,
// SET x TO DEFAULT, a local set_config) is kept for the client's later
// transactions as PostgreSQL keeps it, in both pool modes: each case runs
// on PostgreSQL directly and through the router, with the same SQLSTATEs
// and the same settings afterwards (in transaction mode on another
// backend).
func TestSet16ExtendedSet(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		for _, tc := range set16Cases {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) { set16Run(t, s, mode, "t3", tc.steps, tc.want) })
		}
	}
}

// set16Run runs steps on PostgreSQL directly and through s (a client of
// tenant, "" for none), with the same SQLSTATEs, and checks set15Check
// afterwards: want on PostgreSQL, and the same through the router (in
// transaction mode on another backend, the one used taken by another
// client).
func set16Run(t *testing.T, s *Server, mode PoolMode, tenant string, steps []set16Step, want string) {
	t.Helper()
	direct, err := pgconn.Connect(ctx(t), nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(context.Background())
	c := connect(t, s, tenant, pgx.QueryExecModeSimpleProtocol)
	for _, st := range steps {
		derr := set16Exec(t, direct, st)
		rerr := set16Exec(t, c.PgConn(), st)
		if got, want := pgCode(rerr), pgCode(derr); got != want {
			t.Fatalf("%q: router %q (%v), PostgreSQL %q (%v)", st.sql, got, rerr, want, derr)
		}
	}
	if mode == PoolTransaction {
		holdBackend(t, s)
	}
	res, err := direct.Exec(ctx(t), set15Check).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	pg := string(res[0].Rows[0][0])
	var got string
	if err := c.QueryRow(ctx(t), set15Check).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if pg != want {
		t.Errorf("PostgreSQL has %q, the case says %q", pg, want)
	}
	if got != pg {
		t.Errorf("through the router %q, on PostgreSQL %q", got, pg)
	}
}

// TestSet16TenantlessBlock checks a session SET or RESET a client with no
// tenant makes in a block whose BEGIN the router still defers (the
// statement runs outside it, on a backend of any shard): a ROLLBACK undoes
// it and a COMMIT keeps it, as on PostgreSQL (the ROLLBACK kept it).
func TestSet16TenantlessBlock(t *testing.T) {
	cases := []struct {
		name  string
		steps []set16Step
		want  string
	}{
		{"set rolled back", []set16Step{{sql: "BEGIN"}, {sql: "SET datestyle = 'ISO, DMY'"}, {sql: "ROLLBACK"}}, "ISO, MDY / postgres"},
		{"set committed", []set16Step{{sql: "BEGIN"}, {sql: "SET datestyle = 'ISO, DMY'"}, {sql: "COMMIT"}}, "ISO, DMY / postgres"},
		{"reset rolled back", []set16Step{{sql: "SET datestyle = 'ISO, DMY'"}, {sql: "BEGIN"}, {sql: "RESET datestyle"}, {sql: "ROLLBACK"}},
			"ISO, DMY / postgres"},
		{"extended set rolled back", []set16Step{{sql: "BEGIN", args: []string{}},
			{sql: "SELECT set_config('datestyle', $1, false)", args: []string{"ISO, DMY"}}, {sql: "ROLLBACK", args: []string{}}}, "ISO, MDY / postgres"},
		{"extended set committed", []set16Step{{sql: "BEGIN", args: []string{}},
			{sql: "SET intervalstyle = 'sql_standard'", args: []string{}}, {sql: "COMMIT", args: []string{}}}, "ISO, MDY / sql_standard"},
	}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		for _, tc := range cases {
			t.Run(string(mode)+"/"+tc.name, func(t *testing.T) { set16Run(t, s, mode, "", tc.steps, tc.want) })
		}
	}
}

// set16Exec runs one step on c and returns its error.
func set16Exec(t *testing.T, c *pgconn.PgConn, st set16Step) error {
	t.Helper()
	if st.args == nil {
		_, err := c.Exec(ctx(t), st.sql).ReadAll()
		return err
	}
	vals := make([][]byte, len(st.args))
	var oids []uint32
	var formats []int16
	for i, a := range st.args {
		vals[i] = []byte(a)
		if st.binary {
			oids = append(oids, st.oid)
			formats = append(formats, 1)
		}
	}
	return c.ExecParams(ctx(t), st.sql, vals, oids, formats, nil).Read().Err
}

// TestSet16ParamSetConfigForms checks which statements the lexer takes for
// a session set_config by parameter (stmtInfo.paramSetConfig), without a
// server.
func TestSet16ParamSetConfigForms(t *testing.T) {
	for _, tc := range []struct {
		sql   string
		param int // 0: not one
	}{
		{"SELECT set_config('datestyle', $1, false)", 1},
		{"select pg_catalog.set_config('App.X', $3, 'off')", 3},
		{"SELECT set_config('datestyle', $1, true)", 0},
		{"SELECT set_config('datestyle', $1, $2)", 0},
		{"SELECT set_config('search_path', $1, false)", 0},
		{"SELECT set_config('role', $1, false)", 0},
		{"SELECT set_config('pgtenant.tenant', $1, false)", 0},
		{"SELECT set_config('pgtenant.tenant_id', $1, false)", 0},
		{"SELECT set_config(E'datestyle', $1, false)", 0},
		{"SELECT set_config('datestyle', $1, false), 1", 0},
		{"SELECT set_config('datestyle', $1, false); SELECT 1", 0},
	} {
		info := classify(tc.sql)
		got := 0
		if info.paramSetConfig {
			got = info.param
		}
		if got != tc.param {
			t.Errorf("%q: param %d, want %d", tc.sql, got, tc.param)
		}
	}
}

// BenchmarkSet16Scan measures what the lexer's new look for a later
// SAVEPOINT or RELEASE costs a query string of several statements with
// none (classify, which every Query gets), and the extra scan a string
// with one now gets (stringSetsOf).
func BenchmarkSet16Scan(b *testing.B) {
	const (
		plain = "SELECT id, v FROM kv WHERE id = 7; UPDATE kv SET v = v + 1 WHERE id = 7; SELECT 1"
		sp    = "SELECT id, v FROM kv WHERE id = 7; SAVEPOINT a; UPDATE kv SET v = v + 1 WHERE id = 7"
	)
	lex := func(sql string) { classify(sql) }
	split := func(sql string) { stringSetsOf(sql) }
	for _, c := range []struct {
		name string
		f    func(string)
		sql  string
	}{{"classify without savepoint", lex, plain}, {"classify with savepoint", lex, sp}, {"stringSetsOf with savepoint", split, sp}} {
		b.Run(c.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				c.f(c.sql)
			}
		})
	}
}
