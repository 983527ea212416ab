package router

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSimpleSetupInClientQuery checks that in transaction pool mode a
// simple-protocol DML statement outside a transaction block reaches the
// server as one Query together with the router's setup (DISCARD TEMP and
// the transaction-local search_path and tenant id, as SET LOCAL statements
// with the path spelled as PostgreSQL spells it): one server transaction
// and one ReadyForQuery per client statement, not a setup Query of its
// own. The backend's current query, as pg_stat_activity shows it, is the
// evidence. The answers are the client's only, and the settings do not
// outlive the transaction.
func TestSimpleSetupInClientQuery(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1}}, nil)
	pc, err := pgconn.Connect(ctx(t), routerURL(s, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	direct, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx(t))
	for _, tenant := range []string{"t2", "t0", `o'brien`, `back\slash`, "t2"} {
		if shardOf(tenant)%2 != 0 {
			continue // node a only
		}
		q := fmt.Sprintf("/* tenant: %s */ SELECT shard, current_setting('pgtenant.tenant_id'), pg_backend_pid() FROM whoami", tenant)
		res, err := pc.Exec(ctx(t), q).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", tenant, err)
		}
		if got, want := len(res), 1; got != want {
			t.Fatalf("%s: %d results, want %d (the setup's answers must not reach the client)", tenant, got, want)
		}
		rows := res[0].Rows
		if len(rows) != 1 {
			t.Fatalf("%s: rows %q", tenant, rows)
		}
		if got, want := string(rows[0][0])+"/"+string(rows[0][1]), fmt.Sprintf("%d/%s", shardOf(tenant), tenant); got != want {
			t.Errorf("%s: got %s, want %s", tenant, got, want)
		}
		if got, want := res[0].CommandTag.String(), "SELECT 1"; got != want {
			t.Errorf("%s: command tag %q, want %q", tenant, got, want)
		}
		var last string
		if err := direct.QueryRow(ctx(t), "SELECT query FROM pg_stat_activity WHERE pid = $1", string(rows[0][2])).Scan(&last); err != nil {
			t.Fatal(err)
		}
		// The setup as SET LOCAL statements (no plan, no row), the path's
		// names as string literals (the server spells them).
		setup := fmt.Sprintf("DISCARD TEMP;SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp';SET LOCAL pgtenant.tenant_id = %s;", shardOf(tenant), quoteLiteral(tenant))
		if last != setup+q {
			t.Errorf("%s: the backend's last query is %q; want the setup and the client's statement in one Query, %q", tenant, last, setup+q)
		}
	}
	// An INSERT: its own command tag, the tenant's default from the
	// transaction-local setting.
	res, err := pc.Exec(ctx(t), "/* tenant: t4 */ INSERT INTO sink (body) VALUES ('combined') RETURNING tenant").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "t4" || res[0].CommandTag.String() != "INSERT 0 1" {
		t.Fatalf("insert: %+v", res)
	}
}

// TestSimpleSetupErrorPosition checks that the position of an error in a
// client's statement sent with the router's setup in front of it (see
// combined.go) points into the client's text, as on a direct connection,
// also when the setup holds non-ASCII characters (positions count
// characters); and that the session goes on after the error.
func TestSimpleSetupErrorPosition(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1}}, nil)
	pc, err := pgconn.Connect(ctx(t), routerURL(s, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	for _, tenant := range []string{"t0", `üñíçødé-租户`, `back\slash`} {
		for _, tc := range []struct {
			query string
			code  string
		}{
			{"SELECT nosuchcolumn FROM whoami", "42703"}, // semantic error: the client's statement
			{"SELECT shard FROM whoami WHERE", "42601"},  // syntax error: nothing of the string ran
			{"SELECT 'ü' || nosuch FROM whoami", "42703"},
		} {
			q := fmt.Sprintf("/* tenant: %s */ %s", tenant, tc.query)
			_, err := pc.Exec(ctx(t), q).ReadAll()
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				t.Fatalf("%s %q: got %v, want an error", tenant, tc.query, err)
			}
			if pe.Code != tc.code {
				t.Errorf("%s %q: code %s, want %s (%v)", tenant, tc.query, pe.Code, tc.code, err)
			}
			// The position a direct connection reports for the same text.
			want := directPosition(t, q)
			if pe.Position != want {
				t.Errorf("%s %q: position %d, want %d", tenant, tc.query, pe.Position, want)
			}
			// The session goes on, on the right shard.
			res, err := pc.Exec(ctx(t), fmt.Sprintf("/* tenant: %s */ SELECT shard FROM whoami", tenant)).ReadAll()
			if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != fmt.Sprint(shardOf(tenant)) {
				t.Fatalf("%s: after the error: %+v, %v", tenant, res, err)
			}
		}
	}
}

// directPosition is the error position Postgres reports for q run on
// shard 0 of node a directly.
func directPosition(t *testing.T, q string) int32 {
	t.Helper()
	pc, err := pgconn.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	_, err = pc.Exec(ctx(t), "SET search_path = shard_0000; "+q).ReadAll()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("direct %q: got %v, want an error", q, err)
	}
	if pe.Position == 0 {
		return 0
	}
	return pe.Position - int32(len("SET search_path = shard_0000; "))
}

// TestSimpleSetupPipelined checks that simple Queries pipelined in one
// write, each for another tenant or the same, each run with their own
// tenant's settings when the setup rides in the client's Query (the
// settings are local to each Query's transaction).
func TestSimpleSetupPipelined(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1}}, nil)
	pc, err := pgconn.Connect(ctx(t), routerURL(s, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	fe := pc.Frontend()
	tenants := []string{"t2", "t2", "t0", "t4", "t4", "t2"}
	for _, tn := range tenants {
		fe.Send(&pgproto3.Query{String: fmt.Sprintf("/* tenant: %s */ SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami", tn)})
	}
	// And one without a hint: it must not inherit the last tenant's
	// settings from the transaction before it.
	fe.Send(&pgproto3.Query{String: "SELECT current_setting('pgtenant.tenant_id', true)"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	cur := ""
	for n := len(tenants) + 1; n > 0; {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if len(m.Values) == 2 {
				cur = string(m.Values[0]) + "/" + string(m.Values[1])
			} else {
				cur = "last:" + string(m.Values[0])
			}
		case *pgproto3.ErrorResponse:
			cur = m.Code
		case *pgproto3.ReadyForQuery:
			got = append(got, cur)
			cur = ""
			n--
		}
	}
	var want []string
	for _, tn := range tenants {
		want = append(want, fmt.Sprintf("%d/%s", shardOf(tn), tn))
	}
	if strings.Join(got[:len(tenants)], ",") != strings.Join(want, ",") {
		t.Errorf("got %v, want %v", got[:len(tenants)], want)
	}
	if last := got[len(tenants)]; last != "last:" && last != "42704" && last != "0A000" && last != "3D000" {
		// Without a tenant the statement is refused or runs with no tenant
		// id; never with the previous statement's.
		if strings.Contains(last, "t2") {
			t.Errorf("a statement without a tenant saw %q", last)
		}
	}
}
