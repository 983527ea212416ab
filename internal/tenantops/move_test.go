package tenantops

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestMove moves a tenant while a writer changes its rows on the source
// node (inserts, updates, deletes of parents and children) until the fence:
// every row of the source at the fence is in the target, none left behind,
// its neighbours in both shards untouched. No router runs: the writer stops
// when the move reaches the fence (a router would hold it there).
func TestMove(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	// Shard 0 is on one node, shard 1 on the other (created alternately).
	cl.addTenant(t, "mover", 0, 40)
	cl.addTenant(t, "stays", 0, 5)
	conn1, schema1 := cl.shardConn(t, 1)
	// The target's keys must not collide: start its sequences high.
	for _, tb := range []string{"customers", "invoices"} {
		if _, err := conn1.Exec(ctx, `SELECT setval(pg_get_serial_sequence($1, 'id'), 100000)`, schema1+"."+tb); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn1.Exec(ctx, `ALTER TABLE `+pgx.Identifier{schema1, "invoice_lines"}.Sanitize()+` ALTER COLUMN id RESTART WITH 100000`); err != nil {
		t.Fatal(err)
	}
	cl.addTenant(t, "neighbour", 1, 5)
	staysBefore, neighbourBefore := cl.rowsOf(t, "stays", 0), cl.rowsOf(t, "neighbour", 1)

	// The writer, on the source node, until the fence.
	conn0, schema0 := cl.shardConn(t, 0)
	wconn, err := pgx.Connect(ctx, conn0.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer wconn.Close(context.Background())
	s0 := pgx.Identifier{schema0}.Sanitize()
	stop := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	var writes int
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			err := pgx.BeginFunc(ctx, wconn, func(tx pgx.Tx) error {
				var cid, iid int64
				if err := tx.QueryRow(ctx, `INSERT INTO `+s0+`.customers (tenant_id, name) VALUES ('mover', $1) RETURNING id`, fmt.Sprint("w", i)).Scan(&cid); err != nil {
					return err
				}
				if err := tx.QueryRow(ctx, `INSERT INTO `+s0+`.invoices (tenant_id, customer_id, total) VALUES ('mover', $1, 1) RETURNING id`, cid).Scan(&iid); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `INSERT INTO `+s0+`.invoice_lines (invoice_id, qty) VALUES ($1, $2)`, iid, i); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `UPDATE `+s0+`.invoice_lines SET qty = qty + 1 WHERE id = (SELECT min(l.id) FROM `+s0+`.invoice_lines l JOIN `+s0+`.invoices v ON v.id = l.invoice_id WHERE v.tenant_id = 'mover')`); err != nil {
					return err
				}
				if i%3 == 0 {
					_, err := tx.Exec(ctx, `DELETE FROM `+s0+`.invoice_lines WHERE id = (SELECT max(l.id) FROM `+s0+`.invoice_lines l JOIN `+s0+`.invoices v ON v.id = l.invoice_id WHERE v.tenant_id = 'mover' AND l.qty IS NULL)`)
					return err
				}
				return nil
			})
			if err != nil {
				werr = err
				return
			}
			writes++
			time.Sleep(2 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	var atFence map[string][]string
	res, err := cl.ops.Move(ctx, "mover", MoveOptions{ToShard: 1, Progress: func(step string) {
		if step == "fence" {
			once.Do(func() { close(stop) })
			wg.Wait()
			atFence = cl.rowsOf(t, "mover", 0)
		}
	}})
	once.Do(func() { close(stop) })
	wg.Wait()
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	t.Logf("moved: %+v; %d writer transactions", res, writes)
	if res.CaughtUp == 0 || writes == 0 {
		t.Fatalf("nothing caught up (%d writes): the test did not test the catch-up", writes)
	}
	loc, err := cl.cat.Locate(ctx, "mover")
	if err != nil || loc.Shard.ID != 1 {
		t.Fatalf("tenant after the move: %+v %v", loc, err)
	}
	if got := cl.rowsOf(t, "mover", 1); !reflect.DeepEqual(got, atFence) {
		t.Fatalf("target rows differ from the source's at the fence:\nwant %d rows\ngot  %d rows", countAll(atFence), countAll(got))
	}
	if n := countAll(cl.rowsOf(t, "mover", 0)); n != 0 {
		t.Fatalf("%d rows left in the source", n)
	}
	if !reflect.DeepEqual(cl.rowsOf(t, "stays", 0), staysBefore) || !reflect.DeepEqual(cl.rowsOf(t, "neighbour", 1), neighbourBefore) {
		t.Fatal("other tenants' rows changed")
	}
	var left int
	if err := conn0.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant_tmove_%'`).Scan(&left); err != nil || left != 0 {
		t.Fatalf("capture schemas left: %d %v", left, err)
	}
	// New rows of the tenant in the target get ids past every copied one.
	var id int64
	if err := conn1.QueryRow(ctx, `INSERT INTO `+pgx.Identifier{schema1, "customers"}.Sanitize()+` (tenant_id) VALUES ('mover') RETURNING id`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	var maxCopied int64
	if err := conn1.QueryRow(ctx, `SELECT max(id) FROM `+pgx.Identifier{schema1, "customers"}.Sanitize()+` WHERE id <> $1`, id).Scan(&maxCopied); err != nil || id <= maxCopied {
		t.Fatalf("new id %d, largest copied %d (%v)", id, maxCopied, err)
	}
	// Moving it back onto a key another tenant holds there: 23505 naming
	// the key, nothing changed.
	if _, err := conn0.Exec(ctx, `INSERT INTO `+s0+`.customers (id, tenant_id) VALUES ($1, 'stays')`, id); err != nil {
		t.Fatal(err)
	}
	_, err = cl.ops.Move(ctx, "mover", MoveOptions{ToShard: 0})
	if sqlState(err) != "23505" || !strings.Contains(err.Error(), fmt.Sprint(id)) {
		t.Fatalf("move onto a colliding key: %v, want 23505 naming %d", err, id)
	}
	if loc, _ := cl.cat.Locate(ctx, "mover"); loc.Shard.ID != 1 {
		t.Fatalf("a refused move moved the tenant to %d", loc.Shard.ID)
	}
	if n := countAll(cl.rowsOf(t, "mover", 1)); n != countAll(atFence)+1 {
		t.Fatalf("a refused move changed the tenant's rows: %d", n)
	}
}

func TestMoveIsolateAndBadInput(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "big", 2, 10)
	cl.addTenant(t, "small", 0, 3)
	cl.addTenant(t, "other", 1, 3)
	// Shard 3 is the only shard without tenants.
	res, err := cl.ops.Move(ctx, "big", MoveOptions{Isolate: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.To != 3 || res.Copied != 40 || res.Deleted != 40 {
		t.Fatalf("isolate: %+v", res)
	}
	cl.addTenant(t, "filler", 2, 1)
	if _, err := cl.ops.Move(ctx, "small", MoveOptions{Isolate: true}); sqlState(err) != "55000" {
		t.Fatalf("isolate without an empty shard: %v", err)
	}
	for _, c := range []struct {
		id   string
		opts MoveOptions
		code string
	}{
		{"nobody", MoveOptions{ToShard: 1}, "42704"},
		{"small", MoveOptions{ToShard: 9}, "22023"},
		{"small", MoveOptions{ToShard: 0}, "22023"},
	} {
		_, err := cl.ops.Move(ctx, c.id, c.opts)
		if got := sqlState(err); got != c.code {
			t.Errorf("move %s %+v: %v, want %s", c.id, c.opts, err, c.code)
		}
	}
	// A table without a rule in either shard: named, nothing changed.
	conn, schema := cl.shardConn(t, 1)
	if _, err := conn.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "notes"}.Sanitize()+` (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	_, err = cl.ops.Move(ctx, "small", MoveOptions{ToShard: 1})
	if sqlState(err) != "42704" || !strings.Contains(err.Error(), "notes") {
		t.Fatalf("move with a table without a rule: %v", err)
	}
	if loc, _ := cl.cat.Locate(ctx, "small"); loc.Shard.ID != 0 || countAll(cl.rowsOf(t, "small", 0)) != 12 {
		t.Fatal("a refused move changed something")
	}
	// An import's legacy shard is refused with a hint.
	if _, err := cl.cat.Pool().Exec(ctx, `INSERT INTO pgtenant.imports (legacy_node, legacy_schema) VALUES ('a', 'public');
		INSERT INTO pgtenant.import_shards (shard) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	_, err = cl.ops.Move(ctx, "other", MoveOptions{ToShard: 3})
	var te *Error
	if !errors.As(err, &te) || te.Code != "55000" || !strings.Contains(te.Hint, "import cutover --shard 1") {
		t.Fatalf("move of a tenant in a legacy shard: %v", err)
	}
}

// TestMoveRefusesTruncate: a TRUNCATE fires no row trigger, so one of the
// source's tables during a tenant move would bring the copied rows back in
// the target. It is refused (55000, naming the table and the move, with a
// hint) from the capture on, until the move ends; the move then completes
// with every row, and TRUNCATE works again.
func TestMoveRefusesTruncate(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "mover", 0, 10)
	cl.addTenant(t, "stays", 0, 3)
	conn0, schema0 := cl.shardConn(t, 0)
	tconn, err := pgx.Connect(ctx, conn0.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer tconn.Close(context.Background())
	before := cl.rowsOf(t, "mover", 0)
	var refused []error
	res, err := cl.ops.Move(ctx, "mover", MoveOptions{ToShard: 1, Progress: func(step string) {
		if step != "copy" && step != "catch-up" {
			return
		}
		for _, tb := range []string{"invoice_lines", "customers"} {
			_, err := tconn.Exec(ctx, "TRUNCATE "+pgx.Identifier{schema0, tb}.Sanitize()+" CASCADE")
			refused = append(refused, err)
		}
	}})
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if len(refused) != 4 {
		t.Fatalf("%d TRUNCATEs tried, want 4", len(refused))
	}
	for _, err := range refused {
		if sqlState(err) != "55000" || !strings.Contains(err.Error(), "tenant move") || !strings.Contains(err.Error(), "TRUNCATE of "+schema0) {
			t.Fatalf("TRUNCATE during the move: %v, want 55000 naming the table and the move", err)
		}
	}
	if got := cl.rowsOf(t, "mover", 1); !reflect.DeepEqual(got, before) {
		t.Fatalf("target rows after the move: %d, want %d", countAll(got), countAll(before))
	}
	if res.Copied == 0 {
		t.Fatalf("nothing copied: %+v", res)
	}
	if _, err := tconn.Exec(ctx, "TRUNCATE "+pgx.Identifier{schema0, "invoice_lines"}.Sanitize()); err != nil {
		t.Fatalf("TRUNCATE after the move: %v", err)
	}
}
