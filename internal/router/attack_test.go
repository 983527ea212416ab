package router

// Hostile-client trials (session 9): protocol edge cases around the
// unnamed statement and portal, odd bytes, tenants and backends that die.
// The fidelity cases compare the router's answers with PostgreSQL's own
// (eachTarget); the rest assert what must never happen: a crossed tenant,
// a stuck or dirty backend.

import (
	"encoding/binary"
	"net"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The unnamed statement and portal as PostgreSQL keeps them: a simple Query
// drops the unnamed statement (a Bind of it after one is 26000), a failed
// Parse of it drops the old one, a Close of what never existed succeeds,
// and Flush answers what was sent without ending the transaction.
func TestHostileUnnamedFidelity(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		// Parse unnamed, Sync, simple Query, Bind unnamed.
		c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		out = append(out, c.q("SELECT 'q' FROM whoami"))
		c.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// Describe of the unnamed statement after its Parse failed.
		c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Parse{Query: "SELEC 1"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// (A Describe of the unnamed statement now is 26000, on the server
		// and through the router: TestHostileUnnamedAfterFailedParse.)
		c.send(&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// Close of statements and portals that never existed.
		c.send(&pgproto3.Close{ObjectType: 'S', Name: "never"}, &pgproto3.Close{ObjectType: 'P', Name: "never"},
			&pgproto3.Close{ObjectType: 'S'}, &pgproto3.Close{ObjectType: 'P'}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// Flush without Sync, then Sync.
		c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		out = append(out, recvUntil[*pgproto3.CommandComplete](c))
		c.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		return strings.Join(out, " | ")
	})
}

// A pipeline of several transactions with an error in the middle: the
// server skips everything up to the next Sync (simple Queries included)
// and then goes on; mixed simple and extended messages; an error the
// router makes itself (a Bind of a statement that does not exist) inside
// a transaction, with the client's ROLLBACK pipelined behind the Sync.
func TestHostilePipelineSkipToSync(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		out = append(out, c.q("DELETE FROM sink WHERE body LIKE 'hp%'"))
		ins := func(v string) []pgproto3.FrontendMessage {
			return []pgproto3.FrontendMessage{&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('" + v + "')"}, &pgproto3.Bind{}, &pgproto3.Execute{}}
		}
		var msgs []pgproto3.FrontendMessage
		msgs = append(msgs, ins("hp1")...)
		msgs = append(msgs, &pgproto3.Sync{})
		msgs = append(msgs, ins("hp2")...)
		msgs = append(msgs, &pgproto3.Parse{Query: "SELECT 1/0 FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{})
		msgs = append(msgs, ins("hp3")...)
		msgs = append(msgs, &pgproto3.Query{String: "INSERT INTO sink (body) VALUES ('hp4')"})
		msgs = append(msgs, &pgproto3.Sync{})
		msgs = append(msgs, &pgproto3.Query{String: "INSERT INTO sink (body) VALUES ('hp5')"})
		msgs = append(msgs, ins("hp6")...)
		msgs = append(msgs, &pgproto3.Query{String: "SELECT 1/0 FROM whoami"})
		msgs = append(msgs, ins("hp7")...)
		msgs = append(msgs, &pgproto3.Sync{})
		msgs = append(msgs, &pgproto3.Parse{Name: "hpn", Query: "SELECT count(*) FROM sink WHERE body LIKE 'hp%'"}, &pgproto3.Sync{})
		msgs = append(msgs, &pgproto3.Query{String: "BEGIN; INSERT INTO sink (body) VALUES ('hp8')"})
		msgs = append(msgs, ins("hp9")...)
		msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "nonexistent"}, &pgproto3.Execute{})
		msgs = append(msgs, ins("hp10")...)
		msgs = append(msgs, &pgproto3.Sync{}, &pgproto3.Query{String: "ROLLBACK"})
		msgs = append(msgs, &pgproto3.Bind{PreparedStatement: "hpn"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		c.send(msgs...)
		out = append(out, c.recv(10))
		out = append(out, c.q("SELECT string_agg(body, ',' ORDER BY body) FROM sink WHERE body LIKE 'hp%'"))
		out = append(out, c.q("DELETE FROM sink WHERE body LIKE 'hp%'"))
		return strings.Join(out, " | ")
	})
}

// Odd bytes after startup: unknown message types, lengths below 4, a huge
// declared length (a clean 08P01, without allocating what it declares),
// CopyData/CopyDone/CopyFail outside COPY (ignored, as by PostgreSQL).
func TestHostileOddBytes(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, nil)
	frame := func(typ byte, n uint32, body []byte) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], n)
		return append(b, body...)
	}
	for _, tcase := range []struct {
		name string
		raw  []byte
		want string // prefix of the transcript
	}{
		{"unknown type", frame('z', 4, nil), "E(08P01"},
		{"length 3", frame('Q', 3, nil), "E(08P01"},
		{"length 0", frame('Q', 0, nil), "E(08P01"},
		{"huge length", frame('Q', 0x7fffffff, []byte("SELECT 1")), "E(08P01"},
		{"huge bind", frame('B', 0xfffffff0, nil), "E(08P01"},
		{"copydata outside copy", append(frame('d', 8, []byte("junk")), frame('Q', 4+17, []byte("SELECT 'after' x\x00"))...), "D(after)"},
		{"copydone outside copy", append(frame('c', 4, nil), frame('Q', 4+17, []byte("SELECT 'after' x\x00"))...), "D(after)"},
		{"copyfail outside copy", append(frame('f', 5, []byte{0}), frame('Q', 4+17, []byte("SELECT 'after' x\x00"))...), "D(after)"},
	} {
		t.Run(tcase.name, func(t *testing.T) {
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			c := tcConnect(t, s, "t2")
			if _, err := c.pc.Conn().Write(tcase.raw); err != nil {
				t.Fatal(err)
			}
			got := recvUntil[*pgproto3.ReadyForQuery](c)
			if !strings.Contains(got, tcase.want) {
				t.Fatalf("got %s, want %s...", got, tcase.want)
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
				t.Errorf("allocated %d bytes for a message it refused", d)
			}
			// The router still serves others.
			d := tcConnect(t, s, "t2")
			if got := d.q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZI" {
				t.Fatalf("next client: %s", got)
			}
		})
	}
	// A message cut short, then the client leaves: no backend is kept.
	nc, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Query{String: "BEGIN"})
	t.Log(c.recv(1))
	c.send(&pgproto3.Query{String: "SELECT shard FROM whoami"})
	t.Log(c.recv(1))
	c.pc.Conn().Write(frame('Q', 100, []byte("SELECT")))
	c.pc.Conn().Close()
	for i := 0; i < 3; i++ { // the two backends are free for others
		d := tcConnect(t, s, "t2")
		d.q("BEGIN")
		if got := d.q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZT" {
			t.Fatalf("client %d after a truncated message: %s", i, got)
		}
		d.q("COMMIT")
	}
}
