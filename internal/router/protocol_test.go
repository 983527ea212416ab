package router

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestPreparedStatementsAcrossBackends(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 3}}, nil)
	ctx := ctx(t)
	var clients []*pgx.Conn
	for i := 0; i < 4; i++ {
		c := connect(t, s, "", pgx.QueryExecModeCacheStatement)
		if _, err := c.Prepare(ctx, "byid", "SELECT val, (SELECT shard FROM whoami) FROM items WHERE id = $1"); err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
	}
	// Each client runs the named statement for tenants on both nodes, so it
	// lands on backends that have never seen it.
	var wg sync.WaitGroup
	errs := make(chan error, len(clients))
	for ci, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				tn := fmt.Sprintf("t%d", (ci+i)%16)
				if _, err := c.Exec(ctx, "SET pgtenant.tenant = '"+tn+"'"); err != nil {
					errs <- err
					return
				}
				var val string
				var shard int
				id := i%100 + 1
				if err := c.QueryRow(ctx, "byid", id).Scan(&val, &shard); err != nil {
					errs <- fmt.Errorf("client %d tenant %s: %w", ci, tn, err)
					return
				}
				if want := fmt.Sprintf("shard%d-%d", shardOf(tn), id); val != want || shard != shardOf(tn) {
					errs <- fmt.Errorf("client %d tenant %s: got %q/%d, want %q", ci, tn, val, shard, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Deallocate and prepare again under the same name with other text.
	c := clients[0]
	if err := c.Deallocate(ctx, "byid"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Prepare(ctx, "byid", "SELECT val || '!' FROM items WHERE id = $1"); err != nil {
		t.Fatal(err)
	}
	var v string
	if err := c.QueryRow(ctx, "/* tenant: t2 */ SELECT 'x'").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SET pgtenant.tenant = 't2'"); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "byid", 5).Scan(&v); err != nil || v != "shard2-5!" {
		t.Fatalf("re-prepared: %q, %v", v, err)
	}
}

func TestPipelineAndBatch(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "t7", mode)
			ctx := ctx(t)
			b := &pgx.Batch{}
			for i := 1; i <= 20; i++ {
				b.Queue("SELECT val FROM items WHERE id = $1", i)
			}
			b.Queue("SELECT shard FROM whoami")
			br := c.SendBatch(ctx, b)
			for i := 1; i <= 20; i++ {
				var v string
				if err := br.QueryRow().Scan(&v); err != nil {
					t.Fatal(err)
				}
				if want := fmt.Sprintf("shard7-%d", i); v != want {
					t.Fatalf("row %d = %q, want %q", i, v, want)
				}
			}
			var sh int
			if err := br.QueryRow().Scan(&sh); err != nil || sh != 7 {
				t.Fatalf("whoami = %d, %v", sh, err)
			}
			if err := br.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCopy(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "t9", mode)
			ctx := ctx(t)
			tag := "copy-" + mode.String()
			rows := make([][]any, 1000)
			for i := range rows {
				rows[i] = []any{"t9", fmt.Sprintf("%s-%d", tag, i)}
			}
			n, err := c.CopyFrom(ctx, pgx.Identifier{"sink"}, []string{"tenant", "body"}, pgx.CopyFromRows(rows))
			if err != nil || n != 1000 {
				t.Fatalf("copy from: %d, %v", n, err)
			}
			var cnt int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body LIKE $1", tag+"-%").Scan(&cnt); err != nil || cnt != 1000 {
				t.Fatalf("count after copy: %d, %v", cnt, err)
			}
			var buf bytes.Buffer
			ct, err := c.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id, val FROM items WHERE id <= 3 ORDER BY id) TO STDOUT")
			if err != nil {
				t.Fatal(err)
			}
			if got, want := buf.String(), "1\tshard1-1\n2\tshard1-2\n3\tshard1-3\n"; got != want || ct.RowsAffected() != 3 {
				t.Fatalf("copy to = %q, want %q", got, want)
			}
			// A failing COPY FROM reports the server's error and the connection survives.
			_, err = c.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "tenant", "val"}, pgx.CopyFromRows([][]any{{1, "x", "dup"}}))
			if got := pgCode(err); got != "23505" {
				t.Fatalf("duplicate copy: %v, want 23505", err)
			}
			if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&cnt); err != nil || cnt != 1 {
				t.Fatalf("after failed copy: %d, %v", cnt, err)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			victim := connect(t, s, "t3", mode)
			bystander := connect(t, s, "t3", mode)
			ctx := ctx(t)
			done := make(chan error, 1)
			go func() {
				_, err := bystander.Exec(ctx, "SELECT pg_sleep(1.5)")
				done <- err
			}()
			qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := victim.Exec(qctx, "SELECT pg_sleep(20)")
			if err == nil {
				t.Fatal("pg_sleep(20) was not cancelled")
			}
			if time.Since(start) > 15*time.Second {
				t.Fatalf("cancel took %s", time.Since(start))
			}
			if err := <-done; err != nil {
				t.Fatalf("bystander's query was affected: %v", err)
			}
		})
	}
}

func TestComplexSQL(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "t13", mode)
			ctx := ctx(t)
			q := `WITH ranked AS (
  SELECT i.id, i.val, row_number() OVER (ORDER BY i.id DESC) AS rn, w.shard
  FROM items i JOIN whoami w ON true
  WHERE i.id <= $1
)
SELECT id, val, rn, shard, sum(id) OVER () FROM ranked WHERE rn <= 3 ORDER BY rn`
			rows, err := c.Query(ctx, q, 10)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var id, rn, shard int
				var sum int64
				var val string
				if err := rows.Scan(&id, &val, &rn, &shard, &sum); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%d:%s:%d:%d:%d", id, val, rn, shard, sum))
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			want := "10:shard5-10:1:5:27 9:shard5-9:2:5:27 8:shard5-8:3:5:27"
			if strings.Join(got, " ") != want {
				t.Fatalf("got %v, want %s", got, want)
			}
			rows, err = c.Query(ctx, "EXPLAIN ANALYZE SELECT * FROM items WHERE id = $1", 5)
			if err != nil {
				t.Fatal(err)
			}
			var plan []string
			for rows.Next() {
				var line string
				rows.Scan(&line)
				plan = append(plan, line)
			}
			if rows.Err() != nil || !strings.Contains(strings.Join(plan, "\n"), "Execution Time") {
				t.Fatalf("explain analyze: %v %v", plan, rows.Err())
			}
		})
	}
}

func TestConcurrentClients(t *testing.T) {
	// 200 clients doing SCRAM at once on 2 cores (slower under -race) need
	// more than the default startup timeout.
	s := startRouter(t, Config{StartupTimeout: 2 * time.Minute, Pool: PoolConfig{MaxSize: 10, WaitTimeout: 60 * time.Second}}, nil)
	// 3,000 transactions and 200 SCRAM logins: 3-4 s here alone, 21 s
	// under -race at load 11, past ctx(t)'s 30 s at load 30. A hang still
	// fails, when the context ends.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const clients, txns = 200, 15
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mode := execModes[i%len(execModes)]
			cfg, _ := pgx.ParseConfig(routerURL(s, ""))
			cfg.DefaultQueryExecMode = mode
			c, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			for j := 0; j < txns; j++ {
				tn := fmt.Sprintf("t%d", (i*7+j)%64)
				err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, true)", tn); err != nil {
						return err
					}
					var shard int
					var tid string
					if err := tx.QueryRow(ctx, "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami WHERE shard >= $1", 0).Scan(&shard, &tid); err != nil {
						return err
					}
					if shard != shardOf(tn) || tid != tn {
						return fmt.Errorf("tenant %s: shard %d tenant_id %q", tn, shard, tid)
					}
					return nil
				})
				if err != nil {
					errs <- fmt.Errorf("client %d txn %d: %w", i, j, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	n := 0
	for err := range errs {
		if n++; n < 5 {
			t.Error(err)
		}
	}
	for _, st := range s.PoolStats() {
		if st.Total > 10 {
			t.Errorf("node %s: %d backend connections, limit 10", st.Node, st.Total)
		}
	}
}

// TestParseErrorsAtParse checks that a statement prepared alone (Parse,
// Sync, as libpq's PQprepare sends it) by a client with a tenant gets the
// server's error at once, and a good one ParseComplete and then runs.
func TestParseErrorsAtParse(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	pc, err := pgconn.Connect(ctx(t), routerURL(s, "t3"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	fe := pc.Frontend()
	// prepare sends Parse and Sync and returns the first answer's type and
	// the error code, if any.
	prepare := func(name, sql string) (string, string) {
		fe.Send(&pgproto3.Parse{Name: name, Query: sql})
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		var first, code string
		for {
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := msg.(type) {
			case *pgproto3.ParseComplete:
				if first == "" {
					first = "ParseComplete"
				}
			case *pgproto3.ErrorResponse:
				if first == "" {
					first, code = "ErrorResponse", m.Code
				}
			case *pgproto3.ReadyForQuery:
				return first, code
			}
		}
	}
	for _, tt := range []struct{ name, sql, first, code string }{
		{"bad", "SELEC shard FROM whoami", "ErrorResponse", "42601"},
		{"missing", "SELECT * FROM no_such_table", "ErrorResponse", "42P01"},
		{"good", "SELECT shard FROM whoami WHERE shard = $1", "ParseComplete", ""},
	} {
		if first, code := prepare(tt.name, tt.sql); first != tt.first || code != tt.code {
			t.Fatalf("prepare %q: %s %s, want %s %s", tt.sql, first, code, tt.first, tt.code)
		}
	}
	res := pc.ExecPrepared(ctx(t), "good", [][]byte{[]byte("3")}, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "3" {
		t.Fatalf("execute the good statement: %v %q", res.Err, res.Rows)
	}
}
