package router

// Hostile-client trials (session 10): a shard move during pipelines, a
// pipeline left open.

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// A shard move during pipelines: a client's unsynced work (answered after
// a Flush) cut by the fence gets one 40001 and nothing of it is kept (before,
// a second error followed, 25001 "bound to tenant t3 ... for tenant t3",
// before the Sync's ReadyForQuery); pipelines sent while the shard is fenced
// are held and run on the new node, the named statement prepared there.
func TestHostileMoveDuringPipeline(t *testing.T) {
	ca, err := pgx.Connect(context.Background(), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	if err := createShard(context.Background(), ca, 3); err != nil {
		t.Fatal(err)
	}
	defer ca.Exec(context.Background(), "DROP SCHEMA shard_0003 CASCADE")
	s := startRouter(t, Config{FenceGrace: 100 * time.Millisecond, HoldTimeout: 10 * time.Second}, nil)
	c := tcConnect(t, s, "t3")
	h := tcConnect(t, s, "t11")
	// named statement prepared on node b
	c.send(&pgproto3.Parse{Name: "ins", Query: "INSERT INTO sink (body) VALUES ($1) RETURNING current_setting('search_path'), current_setting('port')"}, &pgproto3.Sync{})
	c.recv(1)
	c.send(&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("mv1")}}, &pgproto3.Execute{}, &pgproto3.Flush{})
	if got := recvUntil[*pgproto3.CommandComplete](c); got != "B D(shard_0003, public, pg_temp) C(INSERT 0 1)" { // the first column only
		t.Fatalf("unsynced INSERT: %s", got)
	}
	fenced := cloneMap(testMap())
	fenced.Version = 2
	fenced.Shards[3].State = placement.StateFenced
	if err := s.SetMap(ctx(t), fenced); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // past FenceGrace: c's implicit transaction is cut
	c.send(&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("mv2")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := c.recv(1); got != "E(40001:the transaction was cut: shard 3 is being moved) ZI" {
		t.Errorf("the rest of a pipeline cut by a fence: %s", got)
	}
	// held pipeline
	h.send(&pgproto3.Parse{Name: "ins", Query: "INSERT INTO sink (body) VALUES ($1) RETURNING current_setting('search_path'), current_setting('port')"}, &pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("mv3")}}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("mv4")}}, &pgproto3.Execute{}, &pgproto3.Sync{},
		&pgproto3.Query{String: "SELECT string_agg(body, ',' ORDER BY body), current_setting('port') FROM sink WHERE body LIKE 'mv%'"})
	c.send(&pgproto3.Bind{PreparedStatement: "ins", Parameters: [][]byte{[]byte("mv5")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	moved := cloneMap(testMap())
	moved.Version = 3
	moved.Shards[3].Node = "a"
	moved.Shards[3].Epoch = 2
	if err := s.SetMap(ctx(t), moved); err != nil {
		t.Fatal(err)
	}
	onA := fmt.Sprintf("D(shard_0003, public, pg_temp,%d) C(INSERT 0 1) ZI", nodeA.Cluster.Port)
	got := h.recv(3)
	if want := "P B " + onA + " B " + onA + fmt.Sprintf(" D(mv3,mv4,mv5,%d) C(SELECT 1) ZI", nodeA.Cluster.Port); got != want &&
		got != strings.Replace(want, "mv3,mv4,mv5", "mv3,mv4", 1) {
		t.Errorf("pipeline held by the fence:\n got: %s\nwant: %s", got, want)
	}
	if got := c.recv(1); got != "B "+onA {
		t.Errorf("c's pipeline held by the fence: %s", got)
	}
	var onB string
	if err := pgxQueryRow(t, nodeDSN(nodeB), "SELECT coalesce(string_agg(body, ','), '') FROM shard_0003.sink WHERE body LIKE 'mv%'", &onB); err != nil || onB != "" {
		t.Errorf("rows left on the old node: %q %v", onB, err)
	}
}

// A client that leaves an unsynced pipeline open (a write answered after a
// Flush, then silence: the server holds the implicit transaction and its
// row lock until a Sync) is ended by IdleInTransactionTimeout like one idle
// in a transaction block: FATAL 25P03, its write rolled back, the backend
// free for the next client. Before, it held the backend and the lock for
// good (the next client of a one-backend pool got 53300).
func TestHostileIdleUnsyncedPipeline(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, IdleInTransactionTimeout: 300 * time.Millisecond, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 5 * time.Second}}, nil)
			a := tcConnect(t, s, "t2")
			a.send(&pgproto3.Parse{Query: "UPDATE items SET val = 'idle' WHERE id = 3"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
			if got := recvUntil[*pgproto3.CommandComplete](a); got != "P B C(UPDATE 1)" {
				t.Fatalf("a: %s", got)
			}
			if got := recvUntil[*pgproto3.ReadyForQuery](a); !strings.HasPrefix(got, "E(25P03:") || !strings.HasSuffix(got, "CLOSED") {
				t.Fatalf("a, idle with its pipeline open: %s", got)
			}
			b := tcConnect(t, s, "t2")
			b.q("SET lock_timeout = '2s'")
			if got := b.q("SELECT val FROM items WHERE id = 3 FOR UPDATE"); got != "D(shard2-3) C(SELECT 1) ZI" {
				t.Fatalf("next client: %s", got)
			}
		})
	}
}
