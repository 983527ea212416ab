package router

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// cloneMap copies m so a test can change it.
func cloneMap(m *placement.Map) *placement.Map {
	c := *m
	c.Shards = append([]placement.Shard(nil), m.Shards...)
	return &c
}

func TestFenceHoldAndRelease(t *testing.T) {
	s := startRouter(t, Config{FenceGrace: 300 * time.Millisecond, HoldTimeout: 20 * time.Second}, nil)
	ctx := ctx(t)
	// Shard 3 lives on node b; the "move" copies it to node a by hand.
	ca, err := pgx.Connect(ctx, nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(ctx)
	if err := createShard(ctx, ca, 3); err != nil {
		t.Fatal(err)
	}
	defer ca.Exec(context.Background(), "DROP SCHEMA shard_0003 CASCADE")

	inflight := connect(t, s, "t3", pgx.QueryExecModeCacheStatement)
	held := connect(t, s, "t11", pgx.QueryExecModeCacheStatement) // shard 3 too
	other := connect(t, s, "t4", pgx.QueryExecModeCacheStatement)

	// A transaction in flight on shard 3 when the fence comes.
	tx, err := inflight.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ('in flight')"); err != nil {
		t.Fatal(err)
	}
	simple := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
	tx2, err := simple.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx2.Exec(ctx, "INSERT INTO sink (body) VALUES ('in flight 2')"); err != nil {
		t.Fatal(err)
	}
	fenced := cloneMap(testMap())
	fenced.Version = 2
	fenced.Shards[3].State = placement.StateFenced
	if err := s.SetMap(ctx, fenced); err != nil {
		t.Fatal(err)
	}
	// The in-flight transaction was cut after the grace: retryable error,
	// in the extended protocol and the simple one.
	_, err = tx.Exec(ctx, "SELECT 1 FROM whoami")
	if got := pgCode(err); got != "40001" && got != "57P01" {
		t.Fatalf("in-flight transaction after the fence: %v, want 40001", err)
	}
	tx.Rollback(ctx)
	_, err = tx2.Exec(ctx, "SELECT 1 FROM whoami")
	if got := pgCode(err); got != "40001" {
		t.Fatalf("in-flight simple-protocol transaction after the fence: %v, want 40001", err)
	}
	if err := tx2.Commit(ctx); err == nil {
		t.Fatal("commit of a cut transaction succeeded")
	}
	// New transactions for shard 3 are held; other shards run.
	res := make(chan string, 1)
	go func() {
		var port int
		var shard int
		err := held.QueryRow(ctx, "SELECT shard, inet_server_port() FROM whoami").Scan(&shard, &port)
		res <- fmt.Sprintf("%d %d %v", shard, port, err)
	}()
	var sh int
	if err := other.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 4 {
		t.Fatalf("other shard while fenced: %d, %v", sh, err)
	}
	select {
	case r := <-res:
		t.Fatalf("fenced shard's query was not held: %s", r)
	case <-time.After(300 * time.Millisecond):
	}
	// Release with the shard on node a.
	moved := cloneMap(testMap())
	moved.Version = 3
	moved.Shards[3].Node = "a"
	moved.Shards[3].Epoch = 2
	if err := s.SetMap(ctx, moved); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if want := fmt.Sprintf("3 %d <nil>", nodeA.Cluster.Port); r != want {
			t.Fatalf("released query: %s, want %s", r, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held query was not released")
	}
	// The cut client works again, now on node a.
	var port int
	if err := inflight.QueryRow(ctx, "SELECT inet_server_port() FROM whoami").Scan(&port); err != nil || port != nodeA.Cluster.Port {
		t.Fatalf("after the move: port %d, %v", port, err)
	}
}

func TestHoldTimeout(t *testing.T) {
	s := startRouter(t, Config{HoldTimeout: 200 * time.Millisecond}, nil)
	ctx := ctx(t)
	c := connect(t, s, "t2", pgx.QueryExecModeSimpleProtocol)
	fenced := cloneMap(testMap())
	fenced.Shards[2].State = placement.StateFenced
	if err := s.SetMap(ctx, fenced); err != nil {
		t.Fatal(err)
	}
	_, err := c.Exec(ctx, "SELECT * FROM whoami")
	if got := pgCode(err); got != "40001" {
		t.Fatalf("held past the timeout: %v, want 40001", err)
	}
	// A cancel ends a hold too.
	s2 := startRouter(t, Config{HoldTimeout: time.Minute}, fenced)
	c2 := connect(t, s2, "t2", pgx.QueryExecModeSimpleProtocol)
	qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err = c2.Exec(qctx, "SELECT * FROM whoami")
	if err == nil {
		t.Fatal("held query was not cancelled")
	}
	if err := s.SetMap(ctx, testMap()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "SELECT * FROM whoami"); err != nil {
		t.Fatal(err)
	}
}

func TestNotices(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	cfg, err := pgx.ParseConfig(routerURL(s, "t1"))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		mu.Lock()
		notices = append(notices, n.Message)
		mu.Unlock()
	}
	c, err := pgx.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx(t))
	if _, err := c.Exec(ctx(t), "DO $$ BEGIN RAISE NOTICE 'hello from %', (SELECT shard FROM whoami); END $$"); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || notices[0] != "hello from 1" {
		t.Fatalf("notices = %q", notices)
	}
}

func TestSessionModeSwitchNode(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	ctx := ctx(t)
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	var sh int
	for _, tn := range []string{"t1", "t2", "t3", "t9"} {
		if _, err := c.Exec(ctx, "SET pgtenant.tenant = '"+tn+"'"); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, "SELECT shard FROM whoami WHERE shard = $1", shardOf(tn)).Scan(&sh); err != nil || sh != shardOf(tn) {
			t.Fatalf("tenant %s: %d %v", tn, sh, err)
		}
	}
	// The backend given back to the pool was reset: another client on the
	// same (only) backend does not see the first client's settings.
	if _, err := c.Exec(ctx, "SELECT set_config('application_name', 'first', false) FROM whoami"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	c2 := connect(t, s, "t9", pgx.QueryExecModeCacheStatement)
	var app string
	if err := c2.QueryRow(ctx, "SELECT current_setting('application_name') FROM whoami").Scan(&app); err != nil || app == "first" {
		t.Fatalf("application_name leaked to the next client: %q %v", app, err)
	}
}

// tcpProxy forwards to target and can be switched off (closing every
// connection) and on again: a node that goes down and comes back.
type tcpProxy struct {
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
	wg     sync.WaitGroup
}

func (p *tcpProxy) up(t *testing.T) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { io.Copy(b, c); b.Close() }()
			go func() { io.Copy(c, b); c.Close() }()
		}
	}()
}

func (p *tcpProxy) down() {
	p.mu.Lock()
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}

func TestNodeDown(t *testing.T) {
	p := &tcpProxy{target: fmt.Sprintf("127.0.0.1:%d", nodeB.Cluster.Port), addr: "127.0.0.1:0"}
	p.up(t)
	m := cloneMap(testMap())
	m.Nodes = map[string]placement.Node{"a": m.Nodes["a"], "b": {Name: "b", DSN: strings.Replace(nodeDSN(nodeB), fmt.Sprintf(":%d/", nodeB.Cluster.Port), ":"+p.addr[strings.LastIndex(p.addr, ":")+1:]+"/", 1)}}
	s := startRouter(t, Config{Pool: PoolConfig{ConnectTimeout: time.Second}}, m)
	ctx := ctx(t)
	onB := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	onA := connect(t, s, "t2", pgx.QueryExecModeCacheStatement)
	var sh int
	if err := onB.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 1 {
		t.Fatalf("before: %d %v", sh, err)
	}
	p.down()
	_, err := onB.Exec(ctx, "SELECT shard FROM whoami")
	if got := pgCode(err); got != "08006" || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("tenant on the dead node: %v, want 08006 naming node b", err)
	}
	// Again: now the pool cannot connect.
	_, err = onB.Exec(ctx, "SELECT shard FROM whoami")
	if got := pgCode(err); got != "08006" {
		t.Fatalf("tenant on the dead node (connect): %v, want 08006", err)
	}
	if err := onA.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 2 {
		t.Fatalf("other node while b is down: %d %v", sh, err)
	}
	p.up(t)
	defer p.down()
	if err := onB.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 1 {
		t.Fatalf("after node came back: %d %v", sh, err)
	}
}

// rawStartup returns a StartupMessage packet for user with params.
func rawStartup(user string, params ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, wire.ProtocolVersion3)
	body = append(body, "user\x00"+user+"\x00"...)
	for i := 0; i+1 < len(params); i += 2 {
		body = append(body, params[i]+"\x00"+params[i+1]+"\x00"...)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

// readUntilClosed returns everything the router sends until it closes.
func readUntilClosed(t *testing.T, c net.Conn) string {
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("router did not close the connection; got %q", b)
	}
	return string(b)
}

func TestBadInput(t *testing.T) {
	// The startup timeout ends "says nothing"; 300 ms once ended a
	// replication startup before its 0A000 on a loaded machine.
	s := startRouter(t, Config{Auth: AuthTrust, MaxMessage: 4096, StartupTimeout: 2 * time.Second}, nil)
	addr := s.Addr().String()
	trustStartup := rawStartup("app", "pgtenant.tenant", "t1")
	tests := []struct {
		name string
		send []byte
		want string // substring of what the router sends back
	}{
		// An impossible startup length is not answered, as by PostgreSQL
		// (TestFidelityBadStartupLengthSilent).
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n"), ""},
		{"short length", []byte{0, 0, 0, 2, 0, 0}, ""},
		{"huge startup", []byte{0, 0x10, 0, 0, 0, 3, 0, 0}, ""},
		{"old protocol", []byte{0, 0, 0, 8, 0, 2, 0, 0}, "08P01"},
		{"no user", []byte{0, 0, 0, 9, 0, 3, 0, 0, 0}, "08P01"},
		{"truncated startup", []byte{0, 0, 0, 40, 0, 3, 0, 0, 'u'}, ""},
		{"says nothing", nil, ""},
		{"oversized message", append(append([]byte{}, trustStartup...), wire.Frame(nil, 'Q', make([]byte, 10000))...), "08P01"},
		{"bad length", append(append([]byte{}, trustStartup...), 'Q', 0xff, 0xff, 0xff, 0xff), "08P01"},
		{"unknown type", append(append([]byte{}, trustStartup...), wire.Frame(nil, 'z', nil)...), "08P01"},
		{"malformed parse", append(append([]byte{}, trustStartup...), wire.Frame(nil, 'P', []byte("s\x00SELECT"))...), "08P01"},
		{"truncated query", append(append([]byte{}, trustStartup...), 'Q', 0, 0, 0, 100, 'S'), ""},
		{"replication", rawStartup("app", "replication", "database"), "0A000"},
		{"physical replication", rawStartup("app", "replication", "true"), "0A000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(tt.send)
			if tt.name == "truncated startup" || tt.name == "truncated query" {
				c.(*net.TCPConn).CloseWrite()
			}
			got := readUntilClosed(t, c)
			if !strings.Contains(got, tt.want) {
				t.Fatalf("router sent %q, want it to contain %q", got, tt.want)
			}
		})
	}
	// The router is still up and serving.
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	var sh int
	if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 1 {
		t.Fatalf("after bad input: %d %v", sh, err)
	}
}

// TestDatabaseName checks that with Config.Database set, other database
// names are refused with 3D000 as by a server, and the configured one works.
func TestDatabaseName(t *testing.T) {
	s := startRouter(t, Config{Database: "pgt"}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement) // routerURL names pgt
	if err := c.Ping(ctx(t)); err != nil {
		t.Fatal(err)
	}
	u := strings.Replace(routerURL(s, "t1"), "/pgt?", "/nosuchdb?", 1)
	_, err := pgx.Connect(ctx(t), u)
	if got := pgCode(err); got != "3D000" || !strings.Contains(err.Error(), `database "nosuchdb" does not exist`) {
		t.Fatalf("connect to nosuchdb: %v (code %q), want 3D000", err, got)
	}
}

func TestAuth(t *testing.T) {
	for _, method := range []AuthMethod{AuthSCRAM, AuthMD5, AuthTrust} {
		t.Run(string(method), func(t *testing.T) {
			s := startRouter(t, Config{Auth: method}, nil)
			c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
			if err := c.Ping(ctx(t)); err != nil {
				t.Fatal(err)
			}
			if method == AuthTrust {
				return
			}
			for _, url := range []string{
				strings.Replace(routerURL(s, ""), testPassword, "wrong", 1),
				strings.Replace(routerURL(s, ""), testUser+":", "nobody:", 1),
			} {
				_, err := pgx.Connect(ctx(t), url)
				if got := pgCode(err); got != "28P01" {
					t.Fatalf("bad credentials: %v, want 28P01", err)
				}
			}
		})
	}
}

func TestIdleTimeout(t *testing.T) {
	s := startRouter(t, Config{ClientIdleTimeout: 200 * time.Millisecond}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	time.Sleep(600 * time.Millisecond)
	if _, err := c.Exec(ctx(t), "SELECT 1"); err == nil {
		t.Fatal("idle client was not disconnected")
	}
}

func TestSessionMode(t *testing.T) {
	defer checkNoLeak(t)()
	t.Run("listen", func(t *testing.T) {
		s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 2}}, nil)
		ctx := ctx(t)
		c := connect(t, s, "t4", pgx.QueryExecModeCacheStatement)
		if _, err := c.Exec(ctx, "SET application_name = 'sess'"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "LISTEN chan1"); err != nil {
			t.Fatal(err)
		}
		var pid int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		other := connect(t, s, "t4", pgx.QueryExecModeCacheStatement)
		if _, err := other.Exec(ctx, "NOTIFY chan1, 'hello'"); err != nil {
			t.Fatal(err)
		}
		var pid2 int
		if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil || pid2 != pid {
			t.Fatalf("session mode changed backend: %d -> %d, %v", pid, pid2, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		n, err := c.WaitForNotification(wctx)
		if err != nil || n.Payload != "hello" {
			t.Fatalf("notification: %+v %v", n, err)
		}
		// Delivered while idle, without another query.
		notified := make(chan error, 1)
		go func() {
			time.Sleep(100 * time.Millisecond)
			_, err := other.Exec(ctx, "NOTIFY chan1, 'idle'")
			notified <- err
		}()
		defer func() { <-notified }()
		n, err = c.WaitForNotification(wctx)
		if err != nil || n.Payload != "idle" {
			t.Fatalf("idle notification: %+v %v", n, err)
		}
		var app string
		if err := c.QueryRow(ctx, "SHOW application_name").Scan(&app); err != nil || app != "sess" {
			t.Fatalf("application_name = %q, %v", app, err)
		}
		if err := <-notified; err != nil {
			t.Fatal(err)
		}
		notified <- nil
		c.Close(ctx)
		other.Close(ctx)
	})
}

func TestListenRefusedInTransactionMode(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	_, err := c.Exec(ctx(t), "LISTEN x")
	if got := pgCode(err); got != "0A000" {
		t.Fatalf("LISTEN: %v, want 0A000", err)
	}
}

// TestSessionSettingsReplayed checks that a session SET follows the client
// to whichever backend serves it, in every pgx exec mode (the extended
// protocol ones send SET as Parse/Bind/Execute), never leaks to another
// client, and that RESET and a bad value behave as on a server.
func TestSessionSettingsReplayed(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	ctx := ctx(t)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			a := connect(t, s, "t2", mode)
			b := connect(t, s, "t2", mode)
			if _, err := a.Exec(ctx, "SET statement_timeout = '1234ms'"); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 3; i++ {
				var va, vb string
				if err := a.QueryRow(ctx, "SHOW statement_timeout").Scan(&va); err != nil {
					t.Fatal(err)
				}
				if err := b.QueryRow(ctx, "SELECT current_setting('statement_timeout') FROM whoami").Scan(&vb); err != nil {
					t.Fatal(err)
				}
				if va != "1234ms" || vb != "0" {
					t.Fatalf("statement_timeout: a %q (want 1234ms), b %q (want 0)", va, vb)
				}
			}
			// A bad value fails like on a server and is not kept.
			_, err := a.Exec(ctx, "SET statement_timeout = 'soon'")
			if got := pgCode(err); got != "22023" {
				t.Fatalf("SET statement_timeout = 'soon': %v (code %q), want 22023", err, got)
			}
			var va string
			if err := a.QueryRow(ctx, "SELECT current_setting('statement_timeout') FROM whoami").Scan(&va); err != nil || va != "1234ms" {
				t.Fatalf("after a bad SET: %q, %v; want 1234ms", va, err)
			}
			if _, err := a.Exec(ctx, "RESET statement_timeout"); err != nil {
				t.Fatal(err)
			}
			if err := a.QueryRow(ctx, "SELECT current_setting('statement_timeout') FROM whoami").Scan(&va); err != nil || va != "0" {
				t.Fatalf("after RESET: %q, %v; want 0", va, err)
			}
		})
	}
	// RESET ALL on an attached backend (session mode keeps it) resets its
	// search_path too: the next statement must still run in the shard.
	t.Run("reset all", func(t *testing.T) {
		ss := startRouter(t, Config{PoolMode: PoolSession}, nil)
		c := connect(t, ss, "t2", pgx.QueryExecModeSimpleProtocol)
		var schema string
		for _, q := range []string{"SELECT current_schema() FROM whoami", "RESET ALL", "SELECT current_schema() FROM whoami"} {
			if strings.HasPrefix(q, "RESET") {
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := c.QueryRow(ctx, q).Scan(&schema); err != nil || schema != "shard_0002" {
				t.Fatalf("%s: %q, %v; want shard_0002", q, schema, err)
			}
		}
	})
	// pgx sends Exec without arguments as a simple Query: send SET over the
	// extended protocol by hand, as drivers that prepare everything do.
	t.Run("extended", func(t *testing.T) {
		a := connect(t, s, "t2", pgx.QueryExecModeExec).PgConn()
		b := connect(t, s, "t2", pgx.QueryExecModeExec).PgConn()
		exec := func(c *pgconn.PgConn, sql string) (string, error) {
			res := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
			if res.Err != nil || len(res.Rows) == 0 {
				return "", res.Err
			}
			return string(res.Rows[0][0]), nil
		}
		if _, err := exec(a, "SET statement_timeout = '777ms'"); err != nil {
			t.Fatal(err)
		}
		if _, err := exec(a, "SET statement_timeout = 'soon'"); pgCode(err) != "22023" {
			t.Fatalf("bad SET: %v, want 22023", err)
		}
		for i := 0; i < 3; i++ {
			va, err := exec(a, "SELECT current_setting('statement_timeout') FROM whoami")
			if err != nil {
				t.Fatal(err)
			}
			vb, err := exec(b, "SELECT current_setting('statement_timeout') FROM whoami")
			if err != nil {
				t.Fatal(err)
			}
			if va != "777ms" || vb != "0" {
				t.Fatalf("statement_timeout: a %q (want 777ms), b %q (want 0)", va, vb)
			}
		}
	})
}

func TestMetricsAndAdmin(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	c.Exec(ctx(t), "SELECT * FROM whoami")
	c.Exec(ctx(t), "SELECT * FROM nope")
	get := func(h interface {
		ServeHTTP(w interface{}, r interface{})
	}) {
	}
	_ = get
	rec := httptest.NewRecorder()
	s.Metrics().Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{`pgtenant_router_transactions_total{node="b"}`, `pgtenant_router_errors_total{class="42",node="b"}`, `pgtenant_router_pool_connections{node="b",state="idle"}`, "pgtenant_router_client_connections 1"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// A tenant id is a label only in the pgtenant_tenant_* series of the
	// busiest tenants (bounded to Config.UsageTopK).
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, `"t1"`) && !strings.HasPrefix(line, "pgtenant_tenant_") {
			t.Errorf("metrics mention a tenant id: %s", line)
		}
	}
	if !strings.Contains(body, `pgtenant_tenant_transactions_total{tenant="t1"}`) {
		t.Error("metrics lack the busiest tenant's pgtenant_tenant_transactions_total")
	}
	rec = httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/admin/clients", nil))
	if !strings.Contains(rec.Body.String(), `"tenant": "t1"`) {
		t.Errorf("admin clients: %s", rec.Body.String())
	}
	rec = httptest.NewRecorder()
	s.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/admin/pools", nil))
	if !strings.Contains(rec.Body.String(), `"node": "b"`) {
		t.Errorf("admin pools: %s", rec.Body.String())
	}
}

func TestMinIdlePerNode(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MinIdle: 2}}, nil)
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok := 0
		for _, st := range s.PoolStats() {
			if st.Idle >= 2 {
				ok++
			}
		}
		if ok == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pools did not reach min idle: %+v", s.PoolStats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStartupTimeoutCoversClientOnly checks that StartupTimeout bounds what
// the client sends (startup packet, authentication), not the router's own
// work after it: the first client of a router learns the server parameters
// from a backend, and a slow node (here one that accepts and never answers,
// so the router waits out its 2 s acquire timeout) must not cost the client
// its startup response.
func TestStartupTimeoutCoversClientOnly(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range held {
			c.Close()
		}
		mu.Unlock()
	})
	m := testMap()
	// Sorted first among the nodes, so the router asks it first.
	m.Nodes["0silent"] = placement.Node{Name: "0silent", DSN: "postgres://u:p@" + ln.Addr().String() + "/db?sslmode=disable"}
	s := startRouter(t, Config{Auth: AuthTrust, StartupTimeout: 300 * time.Millisecond}, m)
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	var sh int
	if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 1 {
		t.Fatalf("after a slow first startup: %d %v", sh, err)
	}
}
