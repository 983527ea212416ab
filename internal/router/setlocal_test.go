package router

import (
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/sqlscan"
)

// TestSearchPathSpelling checks that every path by which the router sets
// a tenant's search_path leaves it spelled as PostgreSQL spells it back
// after SET search_path (quotes only where needed), which is also what
// SET LOCAL (the simple Query's setup, combined.go) stores: SHOW
// search_path and current_setting read the same on every path, and as
// after the same SET in psql. Shared schema names that need quotes, a
// reserved and an unreserved keyword among them.
func TestSearchPathSpelling(t *testing.T) {
	direct, err := pgx.Connect(ctx(t), nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx(t))
	long := "shared_" + strings.Repeat("x", 70)
	for _, shared := range []string{"public", "Ext Shared", "user", "schema", `a"b`, "", long} {
		// What the server makes of the same list: quote_ident, and SHOW
		// after SET search_path with the names as string literals (a
		// name longer than 63 bytes clipped as the server clips an
		// identifier: no schema has the longer name).
		var want, set string
		q := "SELECT quote_ident('shard_0003') || ', ' || quote_ident(substr($1, 1, 63)) || ', pg_temp'"
		lit := "'shard_0003', " + quoteLiteral(sqlscan.TruncateIdentifier(shared)) + ", 'pg_temp'"
		if shared == "" {
			q = "SELECT quote_ident('shard_0003') || ', pg_temp' WHERE $1::text IS NOT NULL"
			lit = "'shard_0003', 'pg_temp'"
		}
		if err := direct.QueryRow(ctx(t), q, shared).Scan(&want); err != nil {
			t.Fatal(err)
		}
		if _, err := direct.Exec(ctx(t), "SET search_path = "+lit); err != nil {
			t.Fatal(err)
		}
		if err := direct.QueryRow(ctx(t), "SHOW search_path").Scan(&set); err != nil || set != want {
			t.Fatalf("shared %q: direct SET search_path gives %q (%v), quote_ident %q", shared, set, err, want)
		}
		for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
			cfg := Config{PoolMode: mode, SharedSchema: shared, NoSharedSchema: shared == ""}
			s := startRouter(t, cfg, nil)
			paths := []struct {
				name  string
				exec  pgx.QueryExecMode
				stmts []string
			}{
				{"simple one statement", pgx.QueryExecModeSimpleProtocol, []string{"SELECT current_setting('search_path') FROM whoami"}},
				{"simple SHOW", pgx.QueryExecModeSimpleProtocol, []string{"SHOW search_path"}},
				{"simple BEGIN", pgx.QueryExecModeSimpleProtocol, []string{"BEGIN", "SELECT current_setting('search_path') FROM whoami", "COMMIT"}},
				{"simple BEGIN ISOLATION LEVEL", pgx.QueryExecModeSimpleProtocol, []string{"BEGIN ISOLATION LEVEL REPEATABLE READ", "SELECT current_setting('search_path') FROM whoami", "COMMIT"}},
				{"extended", pgx.QueryExecModeCacheStatement, []string{"SELECT current_setting('search_path') FROM whoami"}},
				{"extended describe", pgx.QueryExecModeDescribeExec, []string{"SELECT current_setting('search_path') FROM whoami"}},
				{"extended BEGIN", pgx.QueryExecModeCacheStatement, []string{"BEGIN", "SELECT current_setting('search_path') FROM whoami", "COMMIT"}},
			}
			for _, p := range paths {
				pcfg, err := pgx.ParseConfig(routerURL(s, "t3"))
				if err != nil {
					t.Fatal(err)
				}
				pcfg.DefaultQueryExecMode = p.exec
				var notices []string
				pcfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Severity+" "+n.Message) }
				c, err := pgx.ConnectConfig(ctx(t), pcfg)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(ctx(t))
				got := ""
				for _, st := range p.stmts {
					rows, err := c.Query(ctx(t), st)
					if err != nil {
						t.Fatalf("shared %q, %s, %s: %s: %v", shared, mode, p.name, st, err)
					}
					for rows.Next() {
						if err := rows.Scan(&got); err != nil {
							t.Fatal(err)
						}
					}
					if rows.Err() != nil {
						t.Fatalf("shared %q, %s, %s: %s: %v", shared, mode, p.name, st, rows.Err())
					}
				}
				if got != want {
					t.Errorf("shared %q, %s, %s: search_path %q, want %q", shared, mode, p.name, got, want)
				}
				if len(notices) != 0 {
					t.Errorf("shared %q, %s, %s: notices %q", shared, mode, p.name, notices)
				}
			}
		}
	}
}

// TestQuoteIdentifierServer checks sqlscan.QuoteIdentifier against the
// server's quote_ident for every keyword the server knows and for names
// around them. Words that are keywords only in a newer PostgreSQL than the
// server's (keywords.txt is 18's) are quoted by the router and not by an
// older server: listed apart.
func TestQuoteIdentifierServer(t *testing.T) {
	direct, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx(t))
	rows, err := direct.Query(ctx(t), `SELECT n, quote_ident(n), k.word IS NOT NULL FROM (
		SELECT word FROM pg_get_keywords() UNION SELECT word || '_' FROM pg_get_keywords() UNION SELECT upper(word) FROM pg_get_keywords()
		UNION VALUES ('shard_0003'), ('public'), ('pg_temp'), ('1x'), ('a b'), ('a"b'), ('ü'), (''), ('_'), ('x$'),
			('json_table'), ('system_user'), ('merge_action')) AS names (n)
		LEFT JOIN pg_get_keywords() k ON k.word = n`)
	if err != nil {
		t.Fatal(err)
	}
	newer := map[string]bool{"json": true, "json_array": true, "json_arrayagg": true, "json_exists": true, "json_object": true,
		"json_objectagg": true, "json_query": true, "json_scalar": true, "json_serialize": true, "json_table": true,
		"json_value": true, "merge_action": true, "system_user": true}
	n := 0
	for rows.Next() {
		var name, want string
		var known bool
		if err := rows.Scan(&name, &want, &known); err != nil {
			t.Fatal(err)
		}
		n++
		if got := sqlscan.QuoteIdentifier(name); got != want && !(newer[name] && !known) {
			t.Errorf("QuoteIdentifier(%q) = %s, server's quote_ident %s", name, got, want)
		}
	}
	if rows.Err() != nil || n < 1000 {
		t.Fatalf("%d names, %v", n, rows.Err())
	}
}

// TestSetLocalTenantLiteral checks the tenant id written as a string
// literal into the router's SET LOCAL (the simple Query's setup and the
// Query of a BEGIN with options): every kind of character a tenant id may
// hold (placement.ValidateTenantID: any UTF-8 but NUL, up to 255 bytes)
// comes back as it is from current_setting('pgtenant.tenant_id'), on the
// tenant's shard, with the setup's answers and no notice reaching the
// client.
func TestSetLocalTenantLiteral(t *testing.T) {
	m := testMap()
	odd := append([]string{}, oddTenants...)
	odd = append(odd, `it''s`, `\'`, `E'x'`, `trailing\`, `\\`, "new\nline", "tab\there",
		`'; SET LOCAL search_path = public; --`, `$$`, `''`, " ", strings.Repeat("租", 85))
	for i, id := range odd {
		m.Tenants[id] = i % testShards
	}
	s := startRouter(t, Config{PoolMode: PoolTransaction}, m)
	var notices []string
	cfg, err := pgconn.ParseConfig(routerURL(s, ""))
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Severity+" "+n.Message) }
	pc, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	for _, id := range odd {
		// The router answers this itself (a bind parameter: any bytes).
		if _, err := pc.ExecParams(ctx(t), "SELECT set_config('pgtenant.tenant', $1, false)", [][]byte{[]byte(id)}, nil, nil, nil).Close(); err != nil {
			t.Fatalf("tenant %q: %v", id, err)
		}
		for _, stmts := range [][]string{
			{"SELECT current_setting('pgtenant.tenant_id'), shard FROM whoami"},
			{"BEGIN ISOLATION LEVEL REPEATABLE READ", "SELECT current_setting('pgtenant.tenant_id'), shard FROM whoami", "COMMIT"},
		} {
			var got []string
			for _, st := range stmts {
				res, err := pc.Exec(ctx(t), st).ReadAll()
				if err != nil {
					t.Fatalf("tenant %q: %s: %v", id, st, err)
				}
				if len(res) != 1 {
					t.Fatalf("tenant %q: %s: %d results, want 1 (the setup's answers must not reach the client)", id, st, len(res))
				}
				got = append(got, res[0].CommandTag.String())
				for _, row := range res[0].Rows {
					got = append(got, string(row[0]), string(row[1]))
				}
			}
			want := []string{"SELECT 1", id, strconv.Itoa(m.Tenants[id])}
			if len(stmts) == 3 {
				want = append([]string{"BEGIN"}, append(want, "COMMIT")...)
			}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Errorf("tenant %q: %q, want %q", id, got, want)
			}
		}
	}
	if len(notices) != 0 {
		t.Errorf("notices: %q", notices)
	}
}

// TestSimpleSetupAnswers checks, message by message, that the answers of
// the router's statements ahead of a simple Query (DISCARD TEMP, SET LOCAL
// of search_path and of the tenant id, or of the tenant id alone when the
// backend's session search_path is the shard's already) never reach the
// client.
func TestSimpleSetupAnswers(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	want := "D(" + sqlscan.QuoteIdentifier("shard_0002") + ", public, pg_temp,t2) C(SELECT 1) ZI"
	q := "SELECT current_setting('search_path'), current_setting('pgtenant.tenant_id') FROM whoami"
	if got := c.q(q); got != want {
		t.Fatalf("first: %s, want %s", got, want)
	}
	// SHOW takes the session setup (flushSetup): the backend's session
	// search_path is then shard 2's, and the next Query's setup sets the
	// tenant id alone.
	if got := c.q("SHOW search_path"); got != "D(shard_0002, public, pg_temp) C(SHOW) ZI" {
		t.Fatalf("SHOW: %s", got)
	}
	d := tcConnect(t, s, "t10") // shard 2 too
	if got, want := d.q(q), "D(shard_0002, public, pg_temp,t10) C(SELECT 1) ZI"; got != want {
		t.Fatalf("tenant alone: %s, want %s", got, want)
	}
	if got, want := d.q("INSERT INTO sink (body) VALUES ('answers')"), "C(INSERT 0 1) ZI"; got != want {
		t.Fatalf("insert: %s, want %s", got, want)
	}
	if got, want := d.q("SELECT tenant FROM sink WHERE body = 'answers'"), "D(t10) C(SELECT 1) ZI"; got != want {
		t.Fatalf("insert's tenant: %s, want %s", got, want)
	}
}
