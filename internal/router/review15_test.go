package router

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestReview15IdleTxnAfterCopy: copyIn clears the client's read deadline
// (a COPY is not idle); the loop's lazy deadline (loop.go, waitEnd) kept
// the earlier wait's deadline as if it were still set, so a client idle in
// a transaction after a COPY FROM STDIN was never ended: its backend held
// and its locks kept for good. The silence must end it with 25P03.
func TestReview15IdleTxnAfterCopy(t *testing.T) {
	const timeout = time.Second
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, IdleInTransactionTimeout: timeout}, nil)
			ctx := ctx(t)
			c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
				t.Fatal(err)
			}
			tag, err := c.PgConn().CopyFrom(ctx, strings.NewReader("review15\n"), "COPY sink (body) FROM STDIN")
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("copy: %v, %v", tag, err)
			}
			// Silent for longer than the timeout; then the connection must
			// have been ended (the read below, bounded by ctx, would
			// otherwise run a statement in the still-open transaction).
			time.Sleep(3 * timeout)
			_, err = c.Exec(ctx, "SELECT 1 FROM whoami")
			var pe *pgconn.PgError
			if err == nil || (errors.As(err, &pe) && pe.Code != "25P03") {
				t.Fatalf("after %v of silence in a transaction after COPY: %v, want 25P03 or a closed connection", 3*timeout, err)
			}
			// Nothing of the transaction committed.
			d := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			var n int
			if err := d.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body = 'review15'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows of the timed-out transaction: %d, %v; want 0", n, err)
			}
		})
	}
}

// TestReview15DeferredBeginServerError: inside a block whose BEGIN the
// router deferred, a statement without a tenant (it reads no shard) runs
// on a server outside the block; its error there must still abort the
// block, as on PostgreSQL: later statements get 25P02 and COMMIT rolls
// back, nothing of the block committed. Before, the INSERT ran and COMMIT
// committed it. By Query and by Parse/Bind/Execute, in both pool modes.
func TestReview15DeferredBeginServerError(t *testing.T) {
	for _, pm := range poolModes {
		for _, extended := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/extended=%v", pm, extended), func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: pm}, nil)
				ctx := ctx(t)
				c := connect(t, s, "", pgx.QueryExecModeSimpleProtocol)
				pc := c.PgConn()
				exec := func(sql string) (string, error) {
					if extended {
						r := pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
						return r.CommandTag.String(), r.Err
					}
					res, err := pc.Exec(ctx, sql).ReadAll()
					if err != nil || len(res) != 1 {
						return "", err
					}
					return res[0].CommandTag.String(), nil
				}
				body := fmt.Sprintf("r15-deferred-%s-%v", pm, extended)
				for _, st := range []struct{ sql, code string }{
					{"BEGIN", ""},
					{"SELECT 1/0", "22012"},
					{"INSERT /* tenant: t3 */ INTO sink (body) VALUES ('" + body + "')", "25P02"},
				} {
					_, err := exec(st.sql)
					var pe *pgconn.PgError
					if errors.As(err, &pe) && pe.Code == st.code || err == nil && st.code == "" {
						continue
					}
					t.Fatalf("%s: %v, want SQLSTATE %q", st.sql, err, st.code)
				}
				if st := pc.TxStatus(); st != 'E' {
					t.Errorf("status in the aborted block: %c, want E", st)
				}
				if tag, err := exec("COMMIT"); err != nil || tag != "ROLLBACK" {
					t.Fatalf("COMMIT of the aborted block: %q, %v; want ROLLBACK", tag, err)
				}
				if st := pc.TxStatus(); st != 'I' {
					t.Fatalf("status after COMMIT: %c", st)
				}
				d := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
				var n int
				if err := d.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body = $1", body).Scan(&n); err != nil || n != 0 {
					t.Fatalf("rows committed from the aborted block: %d, %v; want 0", n, err)
				}
			})
		}
	}
}

// TestReview15ResetAllInDo: RESET ALL inside a DO block reset the
// backend's search_path and pgtenant.tenant_id behind the router's back:
// the block's later statements and the client's next ones ran with
// search_path public (current_schema() public, the shard's tables 42P01).
// Refused with 0A000 as the other spellings of the router's settings in DO
// bodies are; the shard's path stays.
func TestReview15ResetAllInDo(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, Pool: PoolConfig{MaxSize: 1}}, nil)
			ctx := ctx(t)
			c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			for _, sql := range []string{
				"DO $$BEGIN RESET ALL; END$$",
				"DO $$BEGIN reset  all ; PERFORM 1; END$$",
				"DO $$BEGIN EXECUTE 'RESET ALL'; END$$",
			} {
				_, err := c.Exec(ctx, sql)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "0A000" {
					t.Errorf("%s: %v, want 0A000", sql, err)
				}
				var schema string
				var shard int
				if err := c.QueryRow(ctx, "SELECT current_schema(), (SELECT shard FROM whoami)").Scan(&schema, &shard); err != nil || schema != "shard_0003" || shard != 3 {
					t.Fatalf("after %s: %q, %d, %v; want shard_0003, 3", sql, schema, shard, err)
				}
			}
		})
	}
}

// TestReview15HeldCursorInDeferredBlock: in session mode a WITH HOLD
// cursor is a portal on the session's backend, which a client may Execute
// or Describe by the protocol inside a block whose BEGIN the router
// deferred: PostgreSQL answers its rows (its description); the router
// answered 34000 and aborted the block. Compared with PostgreSQL (session
// mode only: transaction mode refuses WITH HOLD).
func TestReview15HeldCursorInDeferredBlock(t *testing.T) {
	targets := diffTargets(t)
	targets = []*diffTarget{targets[0], targets[2]} // PostgreSQL, session mode
	declare := q("DECLARE c CURSOR WITH HOLD FOR SELECT id FROM kv ORDER BY id")
	for i, seq := range [][][]fm{
		{declare,
			{&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Execute{Portal: "c", MaxRows: 2}, &pgproto3.Sync{}},
			q("INSERT INTO kv VALUES (9, 'x')"), q("COMMIT"), q("SELECT count(*) FROM kv")},
		{declare, q("BEGIN"), {&pgproto3.Describe{ObjectType: 'P', Name: "c"}, &pgproto3.Execute{Portal: "c"}, &pgproto3.Sync{}},
			q("COMMIT"), q("SELECT count(*) FROM kv")},
	} {
		diffCheckSeq(t, targets, int64(-1000-i), seq)
	}
}

// TestReview15CopyThenRouterError: a pipeline whose Execute starts COPY
// FROM STDIN, followed by a message the router refuses itself (a Bind of
// no statement: 26000; a FunctionCall: 0A000) and Sync. PostgreSQL fails
// the COPY on the next message (08P01, then FATAL). The router, ending the
// batch (localError), entered COPY and waited, without a read deadline,
// for data the client would never send, while the client waited for its
// answer: a hang, the backend held. In session mode always after diff15's
// Flush-and-drain in localError (26000); otherwise as a race. Now the COPY
// is failed at once: an error and ReadyForQuery (or the server's FATAL),
// nothing copied.
func TestReview15CopyThenRouterError(t *testing.T) {
	targets := diffTargets(t)
	copyExec := func() []fm {
		return []fm{&pgproto3.Parse{Query: "COPY kv FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}}
	}
	for _, c := range []struct {
		name string
		seq  [][]fm
	}{
		{"bind of no statement", [][]fm{append(copyExec(), &pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Sync{})}},
		{"flush, bind of no statement", [][]fm{append(copyExec(), &pgproto3.Flush{}), {&pgproto3.Bind{PreparedStatement: "nope"}, &pgproto3.Sync{}}}},
		{"function call", [][]fm{append(copyExec(), &pgproto3.FunctionCall{Function: 1}, &pgproto3.Sync{})}},
	} {
		for _, d := range targets[1:] {
			run, err := d.run(c.seq)
			if err != nil {
				t.Fatal(err)
			}
			last := run[len(run)-1]
			if k := last[len(last)-1].key; k != "ZI" && k != "E(FATAL 08P01)" {
				t.Errorf("%s, %s: the pipeline ended with %s (%v), want ReadyForQuery or FATAL", c.name, d.name, last[len(last)-1].full, run)
			}
			var n int
			if err := d.admin.QueryRow(ctx(t), "SELECT count(*) FROM shard_0000.kv").Scan(&n); err != nil || n != 5 {
				t.Errorf("%s, %s: kv has %d rows (%v), want the 5 it had", c.name, d.name, n, err)
			}
		}
	}
}
