package router

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// rawConn is a protocol-level connection through s for tenant.
func rawConn(t *testing.T, s *Server, tenant string) (*pgproto3.Frontend, net.Conn) {
	t.Helper()
	pc := pcConnect(t, s, tenant)
	hj, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hj.Conn.Close() })
	return hj.Frontend, hj.Conn
}

// readUntilRFQ reads messages up to ReadyForQuery (or a FATAL error) and
// returns them in short form: the type, a row's first value, an error's code.
func readUntilRFQ(t *testing.T, fe *pgproto3.Frontend, nc net.Conn) []string {
	t.Helper()
	var out []string
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		m, err := fe.Receive()
		if err != nil {
			out = append(out, "ERR "+err.Error())
			return out
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			if m.Code == "34000" {
				out = append(out, "E "+m.Code+" "+m.Message)
			} else {
				out = append(out, "E "+m.Code)
			}
			if m.Severity == "FATAL" {
				return out
			}
		case *pgproto3.DataRow:
			out = append(out, "D "+string(m.Values[0]))
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z "+string(m.TxStatus))
			return out
		default:
			out = append(out, typeName(m))
		}
	}
}

// typeName is a short name of a message type.
func typeName(m pgproto3.BackendMessage) string {
	switch m.(type) {
	case *pgproto3.ParseComplete:
		return "1"
	case *pgproto3.BindComplete:
		return "2"
	case *pgproto3.CloseComplete:
		return "3"
	case *pgproto3.CommandComplete:
		return "C"
	case *pgproto3.RowDescription:
		return "T"
	case *pgproto3.NoData:
		return "n"
	}
	return "?"
}

// A hostile pipeline, in both pool modes: statements for two tenants
// before one Sync get 25001 at the second tenant and nothing of it runs (the
// implicit transaction is rolled back, as after a server error); Close of
// unknown portals and statements is no error and Execute of one is 34000
// naming it, as from the server; after an error, what comes before Sync is
// skipped and the session goes on; a FunctionCall (fast path, which would
// call set_config by oid behind the router's checks) is refused with 0A000
// and reaches no server (see TestFunctionCallRefused).
func TestHostilePipelines(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm}, nil)
			fe, nc := rawConn(t, s, "")
			body := "hostile-pipe-" + string(pm)
			fe.Send(&pgproto3.Parse{Query: "/* tenant: t1 */ SELECT shard FROM whoami"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Parse{Name: "x3", Query: "/* tenant: t3 */ INSERT INTO sink (body) VALUES ('" + body + "')"})
			fe.Send(&pgproto3.Bind{PreparedStatement: "x3"})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			fe.Flush()
			if got, want := strings.Join(readUntilRFQ(t, fe, nc), "|"), `1|2|D 1|C|1|E 25001|Z I`; got != want {
				t.Fatalf("two tenants in one pipeline: %s, want %s", got, want)
			}
			fe.Send(&pgproto3.Close{ObjectType: 'P', Name: "nope"})
			fe.Send(&pgproto3.Close{ObjectType: 'S', Name: "nope"})
			fe.Send(&pgproto3.Execute{Portal: "nope"})
			fe.Send(&pgproto3.Sync{})
			fe.Flush()
			if got, want := strings.Join(readUntilRFQ(t, fe, nc), "|"), `3|3|E 34000 portal "nope" does not exist|Z I`; got != want {
				t.Fatalf("unknown portal: %s, want %s", got, want)
			}
			// An error after a Flush: the rest up to Sync is skipped.
			fe.Send(&pgproto3.Parse{Query: "/* tenant: t1 */ SELECT 1/0"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Flush{})
			fe.Flush()
			fe.Send(&pgproto3.Parse{Query: "/* tenant: t3 */ INSERT INTO sink (body) VALUES ('" + body + "')"})
			fe.Send(&pgproto3.Bind{})
			fe.Send(&pgproto3.Execute{})
			fe.Send(&pgproto3.Sync{})
			fe.Send(&pgproto3.Query{String: "/* tenant: t3 */ SELECT shard FROM whoami"})
			fe.Flush()
			if got, want := strings.Join(readUntilRFQ(t, fe, nc), "|"), `1|E 22012|Z I`; got != want {
				t.Fatalf("error after Flush: %s, want %s", got, want)
			}
			if got, want := strings.Join(readUntilRFQ(t, fe, nc), "|"), `T|D 3|C|Z I`; got != want {
				t.Fatalf("the next query: %s, want %s", got, want)
			}
			c, err := pgx.Connect(ctx(t), nodeDSN(nodeB))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close(ctx(t))
			var n int
			if err := c.QueryRow(ctx(t), "SELECT count(*) FROM shard_0003.sink WHERE body = $1", body).Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows of the refused or skipped inserts: %d, %v", n, err)
			}
			fe.Send(&pgproto3.FunctionCall{Function: 2078}) // set_config
			fe.Flush()
			if got, want := strings.Join(readUntilRFQ(t, fe, nc), "|"), `E 0A000|Z I`; got != want {
				t.Fatalf("fast path: %s, want %s", got, want)
			}
		})
	}
}
