package tenantops

import (
	"errors"
	"math"
	"reflect"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/importer"
)

// TestMoveKeepsImportIDBlocks: while an import is recorded, each cut-over
// shard's sequences hand out ids from the shard's own block
// (importer/idblocks.go). A tenant move from shard 3 to shard 0 used to
// raise shard 0's sequences to shard 3's, into shard 3's block: both shards
// then handed out the same ids, and a rollback writing both back into the
// legacy tables would fail with 23505. Now the target's sequences stay in
// its block, the moved rows keep their ids (from the source's block, which
// the target's sequence never reaches), every id is unique across shards,
// and a move that could only work by leaving a block is refused with 55000
// before anything changes.
func TestMoveKeepsImportIDBlocks(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	const shards = 4 // newCluster's
	tablesWithSeq := []string{"customers", "invoices", "invoice_lines"}
	seqOf := func(shard int, table string) (*pgx.Conn, string) {
		conn, schema := cl.shardConn(t, shard)
		var seq string
		if err := conn.QueryRow(ctx, `SELECT pg_get_serial_sequence($1, 'id')`, pgx.Identifier{schema, table}.Sanitize()).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return conn, seq
	}
	// nextOwner is whose block the next id of shard's sequence for table is in.
	nextOwner := func(shard int, table string) (int, int64) {
		conn, seq := seqOf(shard, table)
		var next int64
		if err := conn.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END FROM `+seq).Scan(&next); err != nil {
			t.Fatal(err)
		}
		owner, _ := importer.IDBlockOf(math.MaxInt64, 1, shards, next)
		return owner, next
	}
	// The cutover of an import with the legacy sequences at 1000: shard s's
	// sequences start its block in the first span (importer.nodeStart).
	const size = int64(1_000_000_000_000)
	const span = size * (shards + 1)
	for s := 0; s < shards; s++ {
		for _, tb := range tablesWithSeq {
			conn, seq := seqOf(s, tb)
			if _, err := conn.Exec(ctx, `SELECT setval($1::regclass, $2)`, seq, span+int64(s+1)*size); err != nil {
				t.Fatal(err)
			}
			if owner, next := nextOwner(s, tb); owner != s {
				t.Fatalf("set-up: shard %d's %s sequence hands out %d, in shard %d's block", s, tb, next, owner)
			}
		}
	}
	if _, err := cl.cat.Pool().Exec(ctx, `INSERT INTO pgtenant.imports (legacy_node, legacy_schema, state) VALUES ('a', 'public', 'streaming')`); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.cat.Pool().Exec(ctx, `INSERT INTO pgtenant.import_shards (shard, state) SELECT id, 'cutover' FROM pgtenant.shards`); err != nil {
		t.Fatal(err)
	}
	cl.addTenant(t, "acme", 3, 5)
	cl.addTenant(t, "zero", 0, 2)
	acme := cl.rowsOf(t, "acme", 3)

	if _, err := cl.ops.Move(ctx, "acme", MoveOptions{ToShard: 0}); err != nil {
		t.Fatal(err)
	}
	if got := cl.rowsOf(t, "acme", 0); !reflect.DeepEqual(got, acme) {
		t.Fatalf("acme's rows in shard 0 after the move:\n%v\nwant (ids kept)\n%v", got, acme)
	}
	for _, tb := range tablesWithSeq {
		if owner, next := nextOwner(0, tb); owner != 0 {
			t.Errorf("after the move, shard 0's %s sequence hands out %d, in shard %d's block: want its own", tb, next, owner)
		}
	}
	cl.addTenant(t, "newcomer", 0, 2) // ids from shard 0's sequences after the move
	for _, tb := range tablesWithSeq {
		seen := map[int64]int{}
		for s := 0; s < shards; s++ {
			conn, schema := cl.shardConn(t, s)
			rows, err := conn.Query(ctx, `SELECT id FROM `+pgx.Identifier{schema, tb}.Sanitize())
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ids {
				if o, ok := seen[id]; ok {
					t.Errorf("%s id %d is in shard %d and shard %d", tb, id, o, s)
				}
				seen[id] = s
			}
		}
	}

	// Shard 1's customers sequence left in shard 3's block (as the old
	// move did): a move into shard 1 would have to raise it there further.
	conn1, seq1 := seqOf(1, "customers")
	if _, err := conn1.Exec(ctx, `SELECT setval($1::regclass, $2)`, seq1, span+4*size+5); err != nil {
		t.Fatal(err)
	}
	cl.addTenant(t, "beta", 2, 2)
	beta := cl.rowsOf(t, "beta", 2)
	_, err := cl.ops.Move(ctx, "beta", MoveOptions{ToShard: 1})
	var oe *Error
	if !errors.As(err, &oe) || oe.Code != "55000" {
		t.Fatalf("move into a shard whose sequence is in another shard's block: %v, want SQLSTATE 55000", err)
	}
	t.Logf("refused: %v (hint: %s)", err, oe.Hint)
	if got := cl.rowsOf(t, "beta", 2); !reflect.DeepEqual(got, beta) {
		t.Errorf("beta's rows in shard 2 after the refused move: %v, want %v", got, beta)
	}
	if got := cl.rowsOf(t, "beta", 1); countAll(got) != 0 {
		t.Errorf("beta's rows left in shard 1 after the refused move: %v", got)
	}
	if _, next := nextOwner(1, "customers"); next != span+4*size+6 {
		t.Errorf("shard 1's customers sequence after the refused move hands out %d, want %d (unchanged)", next, span+4*size+6)
	}
	var shard int
	if err := cl.cat.Pool().QueryRow(ctx, `SELECT shard FROM pgtenant.tenants WHERE id = 'beta'`).Scan(&shard); err != nil || shard != 2 {
		t.Errorf("beta after the refused move: shard %d (%v), want 2", shard, err)
	}
}
