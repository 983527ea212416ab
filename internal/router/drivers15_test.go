package router

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// A FETCH prepared before its cursor exists is described NoData (the
// server cannot know the cursor's columns then); run later in a block
// that declared the cursor, the server gives the cursor's rows: it never
// analyses the FETCH again (no DDL invalidates it, and the search_path
// did not change). pgx's TestConnExecStatementCursorFetch,
// TestPipelineQueryStatementCursorFetch and
// TestConnQueryPreparedCursorFetch (v5.12.0) do this; through the router
// in transaction mode they failed whenever the block landed on another
// backend than the Prepare (run in parallel with other tests): the
// statement was prepared afresh there, its Describe gave the cursor's
// columns, which differ from the NoData the client was told, and the
// router refused it with 0A000 "cached plan must not change result type"
// (stale.go's shape check), where the server runs it. The steps run
// against PostgreSQL first, then through the router with a second client
// holding the backend the Prepare ran on, so the block gets another one.
func TestDrivers15FetchPreparedBeforeCursor(t *testing.T) {
	run := func(t *testing.T, dsn string, hold func(t *testing.T)) {
		bg := context.Background()
		c, err := pgconn.Connect(bg, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(bg)
		sd, err := c.Prepare(ctx(t), "ps_fetch", `fetch all in "drivers15_cursor"`, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(sd.Fields) != 0 {
			t.Fatalf("prepared: %d fields, want 0 (NoData)", len(sd.Fields))
		}
		hold(t)
		if _, err := c.Exec(ctx(t), "begin").ReadAll(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx(t), `declare "drivers15_cursor" cursor for select n, n::text from generate_series(1, 3) n`).ReadAll(); err != nil {
			t.Fatal(err)
		}
		r := c.ExecStatement(ctx(t), sd, nil, nil, nil).Read()
		if r.Err != nil {
			t.Fatalf("execute the prepared fetch: %v", r.Err)
		}
		if got, want := len(r.FieldDescriptions), 2; got != want {
			t.Fatalf("fields: %d, want %d", got, want)
		}
		if got, want := r.FieldDescriptions[1].DataTypeOID, uint32(pgtype.TextOID); got != want {
			t.Errorf("second column's type: %d, want %d (text)", got, want)
		}
		if got, want := len(r.Rows), 3; got != want {
			t.Fatalf("rows: %d, want %d", got, want)
		}
		if got, want := string(r.Rows[2][1]), "3"; got != want {
			t.Errorf("last row: %q, want %q", got, want)
		}
		if _, err := c.Exec(ctx(t), "rollback").ReadAll(); err != nil {
			t.Fatal(err)
		}
		// Prepared on this backend now, as the client saw it: it runs again.
		if _, err := c.Exec(ctx(t), `begin; declare "drivers15_cursor" cursor for select 1 as one`).ReadAll(); err != nil {
			t.Fatal(err)
		}
		r = c.ExecStatement(ctx(t), sd, nil, nil, nil).Read()
		if r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "1" {
			t.Fatalf("again: err %v, rows %q, want one row 1", r.Err, r.Rows)
		}
		if _, err := c.Exec(ctx(t), "rollback").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("postgres", func(t *testing.T) {
		run(t, nodeDSN(nodeA), func(*testing.T) {})
	})
	t.Run("router", func(t *testing.T) {
		s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
		other := connect(t, s, "t0", pgx.QueryExecModeSimpleProtocol)
		run(t, routerURL(s, "t0"), func(t *testing.T) {
			// The pool hands out the backend used last: the Prepare's.
			if _, err := other.Exec(ctx(t), "begin; select count(*) from items"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { other.Exec(context.Background(), "rollback") })
		})
	})
}

func TestDrivers15ShapeAtRun(t *testing.T) {
	for _, c := range []struct {
		query string
		want  bool
	}{
		{`fetch all in "c"`, true},
		{`FETCH 10 FROM c`, true},
		{"  \n\t-- next rows\n/* a /* nested */ comment */ Fetch next c", true},
		{"fetch", true},
		{"fetcher", false},
		{"select * from fetch_log", false},
		{"move all in c", false},
		{"/* fetch */ select 1", false},
		{"-- fetch", false},
		{"", false},
	} {
		if got := shapeAtRun(c.query); got != c.want {
			t.Errorf("shapeAtRun(%q) = %v, want %v", c.query, got, c.want)
		}
	}
}
