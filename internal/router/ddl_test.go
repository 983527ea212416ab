package router

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TestClassifyDDL runs the cases of testdata/ddl_cases.json: which
// statements the router takes for schema changes (stmtInfo.ddl: the
// lexer's, with what guard finds in DO bodies).
func TestClassifyDDL(t *testing.T) {
	b, err := os.ReadFile("testdata/ddl_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Comment string `json:"comment"`
		Query   string `json:"query"`
		DDL     bool   `json:"ddl"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		info := classify(c.Query)
		got := info.ddl
		if g := guard(c.Query); info.guardScan && g != nil {
			got = got || g.ddl
		}
		if got != c.DDL {
			t.Errorf("%s: %q: ddl %v, want %v", c.Comment, c.Query, got, c.DDL)
		}
	}
}

// noticeConn connects through s for tenant in mode and collects the
// notices it gets.
func noticeConn(t *testing.T, s *Server, tenant string, mode pgx.QueryExecMode) (*pgx.Conn, func() []*pgconn.Notice) {
	t.Helper()
	cfg, err := pgx.ParseConfig(routerURL(s, tenant))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	var mu sync.Mutex
	var got []*pgconn.Notice
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
	}
	c, err := pgx.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatalf("connect through router: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, func() []*pgconn.Notice {
		mu.Lock()
		defer mu.Unlock()
		n := got
		got = nil
		return n
	}
}

// tableSchemas lists the schemas of both nodes holding a table named name.
func tableSchemas(t *testing.T, name string) []string {
	t.Helper()
	var schemas []string
	for _, n := range []string{nodeDSN(nodeA), nodeDSN(nodeB)} {
		c, err := pgx.Connect(ctx(t), n)
		if err != nil {
			t.Fatal(err)
		}
		rows, _ := c.Query(ctx(t), "SELECT table_schema::text FROM information_schema.tables WHERE table_name = $1", name)
		s, err := pgx.CollectRows(rows, pgx.RowTo[string])
		c.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		schemas = append(schemas, s...)
	}
	return schemas
}

// dropEverywhere drops table name from every shard when the test ends.
func dropEverywhere(t *testing.T, names ...string) {
	t.Cleanup(func() {
		for _, n := range []string{nodeDSN(nodeA), nodeDSN(nodeB)} {
			c, err := pgx.Connect(context.Background(), n)
			if err != nil {
				t.Error(err)
				return
			}
			for sh := 0; sh < testShards; sh++ {
				for _, name := range names {
					c.Exec(context.Background(), "DROP TABLE IF EXISTS "+pgx.Identifier{placement.SchemaName(sh), name}.Sanitize())
				}
			}
			c.Close(context.Background())
		}
	})
}

// checkDDLWarning fails t unless notices are exactly one WARNING 01000
// naming schema with a hint naming pgtenant migrate.
func checkDDLWarning(t *testing.T, what string, notices []*pgconn.Notice, schema string) {
	t.Helper()
	if len(notices) != 1 {
		t.Fatalf("%s: %d notices, want 1: %v", what, len(notices), notices)
	}
	n := notices[0]
	if n.Severity != "WARNING" || n.Code != "01000" || !strings.Contains(n.Message, schema) || !strings.Contains(n.Hint, "pgtenant migrate up") {
		t.Fatalf("%s: notice %s %s %q hint %q; want WARNING 01000 naming %s, hint naming pgtenant migrate up", what, n.Severity, n.Code, n.Message, n.Hint, schema)
	}
}

// TestDDLWarns: a schema change sent for a tenant runs on that tenant's
// shard only, and the client hears so once per statement, in every exec
// mode; temporary tables and DML get no warning (newuser11: DDL through
// the router was silent).
func TestDDLWarns(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	const tenant = "t3"
	schema := placement.SchemaName(shardOf(tenant))
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			table := "ddl_notes_" + strings.NewReplacer(" ", "", "_", "").Replace(mode.String())
			dropEverywhere(t, table)
			c, notices := noticeConn(t, s, tenant, mode)
			ctx := ctx(t)
			if _, err := c.Exec(ctx, "CREATE TABLE "+table+" (id int)"); err != nil {
				t.Fatal(err)
			}
			checkDDLWarning(t, "CREATE TABLE", notices(), schema)
			if got := tableSchemas(t, table); len(got) != 1 || got[0] != schema {
				t.Fatalf("table %s is in %v, want [%s] only", table, got, schema)
			}
			for _, q := range []string{
				"INSERT INTO " + table + " VALUES (1)",
				"SELECT count(*) FROM " + table,
				"TRUNCATE " + table,
			} {
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				if n := notices(); len(n) != 0 {
					t.Fatalf("%s: notices %v, want none", q, n)
				}
			}
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "CREATE TEMP TABLE ddl_tmp (id int) ON COMMIT DROP"); err != nil {
				t.Fatal(err)
			}
			if n := notices(); len(n) != 0 {
				t.Fatalf("CREATE TEMP TABLE: notices %v, want none", n)
			}
			// Inside a transaction: still once, the shard named.
			if _, err := tx.Exec(ctx, "ALTER TABLE "+table+" ADD COLUMN body text"); err != nil {
				t.Fatal(err)
			}
			checkDDLWarning(t, "ALTER TABLE in a transaction", notices(), schema)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			// A hint comment names the tenant for a connection without one.
			c2, notices2 := noticeConn(t, s, "", mode)
			if _, err := c2.Exec(ctx, "/* tenant: "+tenant+" */ DROP TABLE "+table); err != nil {
				t.Fatal(err)
			}
			checkDDLWarning(t, "DROP TABLE with a hint", notices2(), schema)
			if got := tableSchemas(t, table); len(got) != 0 {
				t.Fatalf("table %s still in %v", table, got)
			}
		})
	}
}

// TestDDLPipeline: Parse/Bind/Execute of two schema changes in one
// pipeline get one warning each; with ddl refuse the first is refused and
// the rest skipped up to the Sync, as after a server error.
func TestDDLPipeline(t *testing.T) {
	const tenant = "t5"
	schema := placement.SchemaName(shardOf(tenant))
	for _, mode := range []DDLMode{DDLWarn, DDLRefuse} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{DDL: mode}, nil)
			a, b := "ddl_pipe_a_"+string(mode), "ddl_pipe_b_"+string(mode)
			dropEverywhere(t, a, b)
			c, notices := noticeConn(t, s, tenant, pgx.QueryExecModeExec)
			ctx := ctx(t)
			p := c.PgConn().StartPipeline(ctx)
			p.SendQueryParams("CREATE TABLE "+a+" (id int)", nil, nil, nil, nil)
			p.SendQueryParams("CREATE TABLE "+b+" (id int)", nil, nil, nil, nil)
			p.SendQueryParams("SELECT 1", nil, nil, nil, nil)
			if err := p.Sync(); err != nil {
				t.Fatal(err)
			}
			var errs []string
			for {
				r, err := p.GetResults()
				if err != nil {
					errs = append(errs, pgCode(err))
					continue
				}
				if r == nil {
					break
				}
				if rr, ok := r.(*pgconn.ResultReader); ok {
					if _, err := rr.Close(); err != nil {
						errs = append(errs, pgCode(err))
					}
				}
			}
			if err := p.Close(); err != nil && mode == DDLWarn {
				t.Fatal(err)
			}
			if mode == DDLWarn {
				n := notices()
				if len(n) != 2 || len(errs) != 0 {
					t.Fatalf("notices %v, errors %v; want 2 warnings, no error", n, errs)
				}
				checkDDLWarning(t, "first", n[:1], schema)
				checkDDLWarning(t, "second", n[1:], schema)
				if ga, gb := tableSchemas(t, a), tableSchemas(t, b); len(ga) != 1 || len(gb) != 1 || ga[0] != schema || gb[0] != schema {
					t.Fatalf("tables in %v and %v, want %s only", ga, gb, schema)
				}
				return
			}
			if len(errs) == 0 || errs[0] != "0A000" {
				t.Fatalf("errors %v, want 0A000 first", errs)
			}
			if got := append(tableSchemas(t, a), tableSchemas(t, b)...); len(got) != 0 {
				t.Fatalf("refused tables exist in %v", got)
			}
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
				t.Fatalf("after the refused pipeline: %d, %v", one, err)
			}
		})
	}
}

// TestDDLRefuse: with ddl refuse a schema change for a tenant gets 0A000
// with the hint and runs nothing; inside a transaction the transaction is
// aborted, as a server error would; TEMP tables and DML still run.
func TestDDLRefuse(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLRefuse}, nil)
	const tenant, table = "t6", "ddl_refused"
	dropEverywhere(t, table)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, tenant, mode)
			ctx := ctx(t)
			_, err := c.Exec(ctx, "CREATE TABLE "+table+" (id int)")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Hint, "pgtenant migrate up") || !strings.Contains(pe.Message, placement.SchemaName(shardOf(tenant))) {
				t.Fatalf("CREATE TABLE: %v, want 0A000 naming the shard with a hint", err)
			}
			if got := tableSchemas(t, table); len(got) != 0 {
				t.Fatalf("refused table exists in %v", got)
			}
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ('ddl refuse')"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "CREATE INDEX ON sink (body)"); pgCode(err) != "0A000" {
				t.Fatalf("CREATE INDEX in a transaction: %v, want 0A000", err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); pgCode(err) != "25P02" {
				t.Fatalf("after the refusal: %v, want 25P02 (transaction aborted)", err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "CREATE TEMP TABLE ddl_tmp2 (id int) ON COMMIT DROP"); err != nil {
				t.Fatalf("CREATE TEMP TABLE: %v", err)
			}
		})
	}
}

// TestDDLAllow: ddl allow is the old behaviour, silent.
func TestDDLAllow(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLAllow}, nil)
	const table = "ddl_allowed"
	dropEverywhere(t, table)
	c, notices := noticeConn(t, s, "t7", pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx(t), "CREATE TABLE "+table+" (id int)"); err != nil {
		t.Fatal(err)
	}
	if n := notices(); len(n) != 0 {
		t.Fatalf("notices %v, want none", n)
	}
}

// TestNoTenantHints: the 3D000 hint points a schema change to pgtenant
// migrate up, and anything else to the transaction-local ways of naming a
// tenant first (newuser11: it led to the session SET and to the one-shard
// trap).
func TestNoTenantHints(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "", mode)
			ctx := ctx(t)
			_, err := c.Exec(ctx, "CREATE TABLE ddl_none (id int)")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "3D000" || !strings.Contains(pe.Hint, "pgtenant migrate up") {
				t.Fatalf("CREATE TABLE without a tenant: %v (hint %q), want 3D000 pointing to pgtenant migrate up", err, hintOf(err))
			}
			_, err = c.Exec(ctx, "SELECT * FROM items")
			if !errors.As(err, &pe) || pe.Code != "3D000" || !strings.HasPrefix(pe.Hint, "Name the tenant for the transaction: a /* tenant: id */ comment, SET LOCAL") ||
				strings.Contains(pe.Hint, "SET pgtenant.tenant") {
				t.Fatalf("SELECT without a tenant: %v (hint %q), want 3D000 naming the transaction-local forms", err, hintOf(err))
			}
		})
	}
}

func hintOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Hint
	}
	return ""
}

// TestRefusedDDLHint: the router's own 42501 refusal of a schema change
// (a restricted user's, or CREATE FUNCTION for a user that runs as a role)
// points to pgtenant migrate up; other refusals keep their hint.
func TestRefusedDDLHint(t *testing.T) {
	for _, c := range []struct {
		access UserAccess
		sql    string
		ddl    bool
	}{
		{UserAccess{Role: "r3", Tenant: "t3"}, "CREATE TABLE notes (id int)", true},
		{UserAccess{Role: "r3", Tenant: "t3"}, "ALTER TABLE items ADD COLUMN x int", true},
		{UserAccess{Role: "pgtenant_app"}, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", true},
		{UserAccess{Role: "r3", Tenant: "t3"}, "VACUUM items", false},
		{UserAccess{Role: "pgtenant_app"}, "SET ROLE postgres", false},
	} {
		ss := &session{access: c.access}
		e := ss.checkAccess(c.sql)
		if e == nil || e.Code != "42501" {
			t.Fatalf("%s: %v, want 42501", c.sql, e)
		}
		if got := strings.Contains(e.Hint, "pgtenant migrate up"); got != c.ddl {
			t.Errorf("%s: hint %q; names migrate up: %v, want %v", c.sql, e.Hint, got, c.ddl)
		}
	}
}

// TestDDLHiddenSelectIntoAndBody: schema changes the lexer and guard
// missed (review 12): SELECT ... INTO under WITH or EXPLAIN ANALYZE (more
// in testdata/ddl_cases.json), COMMENT ON and GRANT ... ON in a DO body.
func TestDDLHiddenSelectIntoAndBody(t *testing.T) {
	for _, q := range []string{
		"EXPLAIN ANALYZE SELECT 1 AS a INTO review12_t",
		"WITH a AS (SELECT 1 AS x) SELECT * INTO review12_t FROM a",
		"SELECT 1 INTO review12_t", // control
	} {
		if !classify(q).ddl {
			t.Errorf("classify(%q).ddl = false, want true", q)
		}
	}
	for _, q := range []string{
		"DO $$ BEGIN EXECUTE 'CREATE TABLE review12_t ()'; END $$", // control
		"DO $$ BEGIN COMMENT ON TABLE items IS 'x'; END $$",
		"DO $$ BEGIN GRANT SELECT ON items TO public; END $$",
	} {
		info := classify(q)
		g := guard(q)
		if !(info.guardScan && g != nil && g.ddl) && !info.ddl {
			t.Errorf("%q: guardScan %v, guard ddl %v, want a schema change", q, info.guardScan, g != nil && g.ddl)
		}
	}
}

// TestDDLRefuseSelectIntoUnderWithExplain: with ddl refuse, SELECT ...
// INTO under WITH or EXPLAIN ANALYZE must not create its table on one
// shard (review 12).
func TestDDLRefuseSelectIntoUnderWithExplain(t *testing.T) {
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

// TestDDLRefusedNotCounted: a DDL the router refuses (it never runs) must
// not count as a schema change (Server.schemaChanged), which drops every
// session's shared statement names and reusable unnamed statements: a
// tenant repeating one would make every session prepare again (review 12).
func TestDDLRefusedNotCounted(t *testing.T) {
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
