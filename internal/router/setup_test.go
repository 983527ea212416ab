package router

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// TestSetupRolledBack checks that a statement failing in the transaction
// that carries the router's search_path/tenant setup (sent with the
// client's first statement on a backend) does not leave the next
// statements on the previous tenant's schema, also when they were
// pipelined behind the failing one; and the same for statements pipelined
// behind the end of an explicit transaction.
func TestSetupRolledBack(t *testing.T) {
	const query = "/* tenant: %s */ SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		for _, extended := range []bool{false, true} {
			name := fmt.Sprintf("%s/extended=%v", mode, extended)
			t.Run(name, func(t *testing.T) {
				// One backend per node: every statement lands on the backend
				// the previous one left set up for another tenant.
				s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
				pc, err := pgconn.Connect(ctx(t), routerURL(s, ""))
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close(ctx(t))
				fe := pc.Frontend()
				send := func(sqls ...string) {
					for _, q := range sqls {
						if extended {
							fe.Send(&pgproto3.Parse{Query: q})
							fe.Send(&pgproto3.Bind{})
							fe.Send(&pgproto3.Execute{})
							fe.Send(&pgproto3.Sync{})
						} else {
							fe.Send(&pgproto3.Query{String: q})
						}
					}
					if err := fe.Flush(); err != nil {
						t.Fatal(err)
					}
				}
				// receive reads n transactions' answers: for each, the
				// first row ("shard/tenant") or the error code.
				receive := func(n int) []string {
					var out []string
					cur := ""
					for n > 0 {
						msg, err := fe.Receive()
						if err != nil {
							t.Fatal(err)
						}
						switch m := msg.(type) {
						case *pgproto3.DataRow:
							if cur == "" {
								cur = string(m.Values[0]) + "/" + string(m.Values[1])
							}
						case *pgproto3.ErrorResponse:
							cur = m.Code
						case *pgproto3.ReadyForQuery:
							out = append(out, cur)
							cur = ""
							n--
						}
					}
					return out
				}
				for round := 0; round < 3; round++ {
					// Leave the backend set up for t2 (shard 2, node a).
					send(fmt.Sprintf(query, "t2"))
					if got := receive(1); got[0] != "2/t2" {
						t.Fatalf("round %d: t2 got %v", round, got)
					}
					// t0 (shard 0, node a): a failing statement first, the
					// next one sent after it (round 0) or behind it in the
					// same write (rounds 1, 2).
					fail := "/* tenant: t0 */ SELECT 1/0 FROM whoami"
					var got []string
					if round == 0 {
						send(fail)
						got = receive(1)
						send(fmt.Sprintf(query, "t0"))
						got = append(got, receive(1)...)
					} else {
						send(fail, fmt.Sprintf(query, "t0"))
						got = receive(2)
					}
					if got[0] != "22012" || got[1] != "0/t0" {
						t.Fatalf("round %d: got %v, want [22012 0/t0]", round, got)
					}
				}
				// An explicit transaction (settings local to it in
				// transaction mode), ended and followed by a statement in
				// the same write: the backend's session values come back at
				// COMMIT and must not serve that statement.
				for _, end := range []string{"COMMIT", "ROLLBACK"} {
					send(fmt.Sprintf(query, "t2"))
					if got := receive(1); got[0] != "2/t2" {
						t.Fatalf("t2 got %v", got)
					}
					send("BEGIN", fmt.Sprintf(query, "t0"), end, fmt.Sprintf(query, "t0"), fmt.Sprintf(query, "t2"))
					got := receive(5)
					if got[1] != "0/t0" || got[3] != "0/t0" || got[4] != "2/t2" {
						t.Fatalf("BEGIN; t0; %s; t0; t2: got %v", end, got)
					}
					// A failing first statement in the transaction (the one
					// that carries the BEGIN and the setup to the backend).
					send("BEGIN", "/* tenant: t0 */ SELECT 1/0 FROM whoami", end, fmt.Sprintf(query, "t2"), "BEGIN", fmt.Sprintf(query, "t0"), end)
					got = receive(7)
					if got[1] != "22012" || got[3] != "2/t2" || got[5] != "0/t0" {
						t.Fatalf("BEGIN; 1/0; %s; t2; BEGIN; t0; %s: got %v", end, end, got)
					}
				}
			})
		}
	}
}
