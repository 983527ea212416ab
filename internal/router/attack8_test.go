package router

// Hostile-client trials (session 11): the idle watch of session mode
// (idlewatch_linux.go: a backend that speaks while its client is idle ends
// the client's read with a past deadline), the setup sent ahead of a
// buffered Parse pipeline (parselook.go) in combinations not tried before,
// and protocol-fidelity leftovers of earlier rounds.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// a8Client is a session-mode client on tenant t4 listening on channel,
// over TLS when s offers it, dialled through dial when not nil.
func a8Client(t *testing.T, s *Server, channel string, dial pgconn.DialFunc) *tc {
	t.Helper()
	url := routerURL(s, "t4")
	if s.cfg.TLS != nil {
		url = withSSLMode(url, "require")
	}
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	if dial != nil {
		cfg.DialFunc = dial
	}
	pc, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close(context.Background()) })
	if _, isTLS := pc.Conn().(*tls.Conn); isTLS != (s.cfg.TLS != nil) {
		t.Fatalf("client over TLS: %v", isTLS)
	}
	c := &tc{t: t, pc: pc, fe: pc.Frontend()}
	if channel != "" {
		if got := c.q("LISTEN " + channel); got != "C(LISTEN) ZI" {
			t.Fatalf("LISTEN: %s", got)
		}
	}
	return c
}

// notifyAndSee sends a notification on channel from other and reads it
// from c, which must be idle (or mid-message) for it to come.
func notifyAndSee(t *testing.T, other *pgx.Conn, c *tc, channel, payload string) {
	t.Helper()
	if _, err := other.Exec(ctx(t), "SELECT pg_notify($1, $2)", channel, payload); err != nil {
		t.Fatal(err)
	}
	if got := c.recvNotification(); got != payload {
		t.Fatalf("notification %q: got %s", payload, got)
	}
}

// recvNotification reads the next message, which must be a notification,
// and returns its payload (else a transcript of what came).
func (r *tc) recvNotification() string {
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			return "ERR:" + err.Error()
		}
		switch m := msg.(type) {
		case *pgproto3.NotificationResponse:
			return m.Payload
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		case *pgproto3.ErrorResponse:
			return "E(" + m.Code + ":" + m.Message + ")"
		default:
			return fmt.Sprintf("%T", m)
		}
	}
}

// A client's message that arrives in pieces while its backend speaks: the
// idle watch's deadline cuts the client's read in the middle of the
// message (a body larger than the read buffer is read straight from the
// socket; under TLS, in the middle of a record too). The session relays
// the notification and reads the rest of the message where it was cut.
func TestHostileIdleWakeMidMessage(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", tlsOn), func(t *testing.T) {
			cfg := Config{PoolMode: PoolSession}
			if tlsOn {
				cfg.TLS = selfSigned(t)
			}
			s := startRouter(t, cfg, nil)
			other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
			for _, size := range []int{100 << 10, 2 << 20} {
				t.Run(fmt.Sprintf("body=%d", size), func(t *testing.T) {
					c := a8Client(t, s, "a8mid", nil)
					sql := "SELECT length('" + strings.Repeat("x", size) + "')"
					msg := wire.Frame(nil, wire.MsgQuery, append([]byte(sql), 0))
					// Four pieces, a notification after each of the first
					// three: from the second on, the router is past the
					// message's header when the backend speaks.
					step := len(msg) / 4
					for i := 0; i < 4; i++ {
						piece := msg[i*step:]
						if i < 3 {
							piece = piece[:step]
						}
						if _, err := c.pc.Conn().Write(piece); err != nil {
							t.Fatal(err)
						}
						if i < 3 {
							notifyAndSee(t, other, c, "a8mid", fmt.Sprintf("piece %d", i))
						}
					}
					if got, want := c.recv(1), fmt.Sprintf("D(%d) C(SELECT 1) ZI", size); got != want {
						t.Fatalf("query cut by wakes: %.200s, want %s", got, want)
					}
					if got := c.q("SELECT shard FROM whoami"); got != fmt.Sprintf("D(%d) C(SELECT 1) ZI", shardOf("t4")) {
						t.Fatalf("next query: %s", got)
					}
				})
			}
			if !tlsOn {
				return
			}
			// One TLS record of a small message split in two TCP writes,
			// with a notification between them.
			sc := &splitConn{}
			c := a8Client(t, s, "a8rec", func(ctx context.Context, network, addr string) (net.Conn, error) {
				nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				sc.Conn = nc
				return sc, err
			})
			halfway, rest := sc.split()
			var once sync.Once
			release := func() { once.Do(func() { close(rest) }) }
			defer release() // on failure too: the client's Close waits for the write
			c.fe.Send(&pgproto3.Query{String: "SELECT 'one record'"})
			flushed := make(chan error, 1)
			go func() { flushed <- c.fe.Flush() }()
			<-halfway
			notifyAndSee(t, other, c, "a8rec", "mid-record")
			release()
			if err := <-flushed; err != nil {
				t.Fatal(err)
			}
			if got := c.recv(1); got != "D(one record) C(SELECT 1) ZI" {
				t.Fatalf("query in a cut record: %s", got)
			}
		})
	}
}

// splitConn writes, once split is called, its next write in two halves:
// it signals halfway after the first and waits for rest to be closed.
type splitConn struct {
	net.Conn
	mu            sync.Mutex
	halfway, rest chan struct{}
}

func (c *splitConn) split() (halfway, rest chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.halfway, c.rest = make(chan struct{}), make(chan struct{})
	return c.halfway, c.rest
}

func (c *splitConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	halfway, rest := c.halfway, c.rest
	c.halfway, c.rest = nil, nil
	c.mu.Unlock()
	if halfway == nil || len(b) < 2 {
		return c.Conn.Write(b)
	}
	n, err := c.Conn.Write(b[:len(b)/2])
	close(halfway)
	if err != nil {
		return n, err
	}
	<-rest
	m, err := c.Conn.Write(b[len(b)/2:])
	return n + m, err
}

// A notification that reaches the router in the same read as the
// ReadyForQuery before it (the router was slow to read: its client did
// not read a large result) is relayed to the idle client at once, not
// held in the backend's read buffer until the client's next query.
func TestHostileIdleWakeBehindReady(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	c := a8Client(t, s, "a8behind", nil)
	pid := pidOf(c.q("SELECT pg_backend_pid()"))
	dc, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close(context.Background())
	// Results the client does not read yet: the router stops reading the
	// backend once the client's socket is full, and the backend, its
	// output all in the sockets' buffers, is idle, its ReadyForQuery
	// unread. The notification it then gets follows that ReadyForQuery.
	// (How much the sockets hold varies: sizes too small leave the router
	// unblocked, too large leave the backend writing.)
	tried := 0
	for _, mb := range []int{1, 3, 4, 5, 6, 8} {
		rows := mb << 10
		sql := fmt.Sprintf("SELECT repeat('y', 1024) FROM generate_series(1, %d)", rows)
		c.send(&pgproto3.Query{String: sql})
		// Idle after this query, not still idle after the last one: the
		// router may not have passed the query on yet (under load it did
		// not, now and then), and a notification sent then reaches the
		// client before the answer.
		state := ""
		for i := 0; i < 200 && state != "idle:ClientRead"; i++ { // its ReadyForQuery sent
			if err := dc.QueryRow(ctx(t), "SELECT state || coalesce(':' || wait_event, '') FROM pg_stat_activity WHERE pid = "+pid+" AND query = $1", sql).Scan(&state); err != nil && !errors.Is(err, pgx.ErrNoRows) {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		idle := state == "idle:ClientRead"
		if idle {
			tried++
			if _, err := other.Exec(ctx(t), "SELECT pg_notify('a8behind', $1)", fmt.Sprint(mb)); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // the notification reaches the router's socket (a pass does not depend on it)
		}
		got := c.recv(1)
		if early := fmt.Sprintf("C(SELECT %d) *pgproto3.NotificationResponse ZI", rows); idle && strings.HasSuffix(got, early) {
			continue // relayed with the answer
		}
		if strings.Contains(got, "Notification") {
			t.Fatalf("%d MB result: notification inside the answer: %.100s ...%s", mb, got, got[max(0, len(got)-100):])
		}
		if want := fmt.Sprintf("C(SELECT %d) ZI", rows); !strings.HasSuffix(got, want) {
			t.Fatalf("%d MB result: ...%s", mb, got[max(0, len(got)-100):])
		}
		if !idle {
			break
		}
		c.pc.Conn().SetReadDeadline(time.Now().Add(10 * time.Second)) // the test's own guard, not a measure
		if got := c.recvNotification(); got != fmt.Sprint(mb) {
			t.Fatalf("%d MB result: notification behind the ReadyForQuery: %s", mb, got)
		}
		c.pc.Conn().SetReadDeadline(time.Time{})
	}
	if tried == 0 {
		t.Fatal("no result left its backend idle")
	}
}

// Backends closed while armed in the idle watch (terminated by the
// server, then the router closes them) and their descriptors reused by
// other sessions' new backends: each later session gets its own wakes,
// never another's, and none is lost. After the router stops, its epoll set
// is closed and no goroutine is left.
func TestHostileIdleWakeFdReuse(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	epolls := eventpollFds(t)
	// Registered before startRouter's cleanup: runs after the router stopped.
	t.Cleanup(func() {
		if got := eventpollFds(t); got != epolls {
			t.Errorf("epoll sets after the router stopped: %d, want %d", got, epolls)
		}
	})
	{
		s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
		other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
		for round := 0; round < 3; round++ {
			a := a8Client(t, s, "a8reuse_a", nil)
			pid := pidOf(a.q("SELECT pg_backend_pid()"))
			terminate(t, pid)
			if got := a.recvNotification(); !strings.HasPrefix(got, "E(57P01:") {
				t.Fatalf("round %d: client of the terminated backend: %s", round, got)
			}
			// New backends, likely on a's descriptor number: each hears
			// only its own channel.
			b := a8Client(t, s, "a8reuse_b", nil)
			c := a8Client(t, s, "a8reuse_c", nil)
			notifyAndSee(t, other, b, "a8reuse_b", fmt.Sprintf("b%d", round))
			notifyAndSee(t, other, c, "a8reuse_c", fmt.Sprintf("c%d", round))
			if got := b.q("SELECT 'b still'"); got != "D(b still) C(SELECT 1) ZI" {
				t.Fatalf("b after c's notification: %s", got)
			}
			b.pc.Close(ctx(t))
			c.pc.Close(ctx(t))
		}
		// A client that leaves while armed: the next client of its backend
		// is woken for itself.
		d := a8Client(t, s, "a8reuse_d", nil)
		d.pc.Conn().Close()
		e := a8Client(t, s, "a8reuse_e", nil)
		notifyAndSee(t, other, e, "a8reuse_e", "e")
		if got := eventpollFds(t); got != epolls+1 {
			t.Errorf("epoll sets while the router runs: %d, want %d", got, epolls+1)
		}
	}
}

// eventpollFds counts this process's epoll descriptors.
func eventpollFds(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "anon_inode:[eventpoll]" {
			n++
		}
	}
	return n
}

// The unnamed statement after its Parse failed on the server: a Describe
// or Bind of it is 26000, as on PostgreSQL (it dropped the old one before
// parsing). Before, the router kept the failed text and prepared it again:
// 42601 at every Describe. A Parse that was only skipped (an earlier error
// of the pipeline) leaves the earlier statement, as on the server.
func TestHostileUnnamedAfterFailedParse(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Parse{Query: "SELEC 1"}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		c.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// In one pipeline: the failed Parse, then a Describe after the Sync.
		c.send(&pgproto3.Parse{Query: "SELECT shard FROM whoami"}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: "SELECT * FROM a8_missing"}, &pgproto3.Sync{},
			&pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{})
		out = append(out, c.recv(3))
		return strings.Join(out, " | ")
	})
}

// A cancel sent while the client's statement waits for a backend from a
// full pool ends the wait with 57014, as PostgreSQL cancels a statement
// waiting for a lock; nothing of it runs, and the next statement runs.
// Before, the cancel was lost and the statement ran once a backend was
// free.
func TestHostileCancelWhileWaitingForPool(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	h := tcConnect(t, s, "t2")
	if got := h.q("BEGIN; SELECT 1 FROM whoami"); got != "C(BEGIN) D(1) C(SELECT 1) ZT" {
		t.Fatalf("holder: %s", got) // holds the only backend
	}
	a := tcConnect(t, s, "t2")
	a.send(&pgproto3.Query{String: "INSERT INTO sink (body) VALUES ('a8-cancelled')"})
	if !waitPoolWaiting(s, 10*time.Second) {
		t.Fatal("a's statement is not waiting for the pool")
	}
	sendCancel(t, s.Addr().String(), &pgproto3.CancelRequest{ProcessID: a.pc.PID(), SecretKey: a.pc.SecretKey()})
	if got := a.recv(1); got != "E(57014:canceling statement due to user request) ZI" {
		t.Errorf("statement cancelled while waiting for the pool: %s", got)
	}
	if got := h.q("COMMIT"); got != "C(COMMIT) ZI" {
		t.Fatalf("holder's COMMIT: %s", got)
	}
	if got := a.q("SELECT count(*) FROM sink WHERE body = 'a8-cancelled'"); got != "D(0) C(SELECT 1) ZI" {
		t.Errorf("the cancelled statement's row: %s", got)
	}
}

// The setup sent ahead of a buffered Parse pipeline (parselook.go) in
// combinations hostile11 did not try: a Parse pipeline for one tenant and
// a simple Query for another in the same write, an Execute with a row
// limit then Sync, a cursor fetched across pipelines in a transaction.
// Each statement reads its own tenant's shard and id.
func TestHostileParseLookCombinations(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	hint := func(tenant, sql string) string { return "/* tenant: " + tenant + " */ " + sql }
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			c := tcConnect(t, s, "")
			body := "a8-pq-" + string(mode)
			c.q(hint("t4", "DELETE FROM sink WHERE body = '"+body+"'")) // (-count=n)
			c.send(&pgproto3.Parse{Query: hint("t4", "INSERT INTO sink (body) VALUES ('"+body+"')")}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Query{String: hint("t6", who)})
			if got := c.recv(2); got != "P B C(INSERT 0 1) ZI D(6,t6) C(SELECT 1) ZI" {
				t.Errorf("Parse pipeline for t4, then a Query for t6: %s", got)
			}
			if got := c.q(hint("t4", "SELECT tenant FROM sink WHERE body = '"+body+"'")); got != "D(t4) C(SELECT 1) ZI" {
				t.Errorf("t4's row: %s", got)
			}
			c.send(&pgproto3.Parse{Query: hint("t4", who+", generate_series(1, 3)")}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 2}, &pgproto3.Sync{},
				&pgproto3.Parse{Query: hint("t6", who)}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if got := c.recv(2); got != "P B D(4,t4) D(4,t4) *pgproto3.PortalSuspended ZI P B D(6,t6) C(SELECT 1) ZI" {
				t.Errorf("row limit then Sync, then t6: %s", got)
			}
			if got := c.q("BEGIN; SET LOCAL pgtenant.tenant = 't4'"); got != "C(BEGIN) C(SET) ZT" {
				t.Errorf("BEGIN: %s", got)
			}
			c.send(&pgproto3.Parse{Query: "DECLARE a8c CURSOR FOR " + who + ", generate_series(1, 3)"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if got := c.recv(1); got != "P B C(DECLARE CURSOR) ZT" {
				t.Errorf("DECLARE: %s", got)
			}
			for i := 0; i < 2; i++ {
				c.send(&pgproto3.Parse{Query: "FETCH 1 FROM a8c"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
				if got := c.recv(1); got != "P B D(4,t4) C(FETCH 1) ZT" {
					t.Errorf("FETCH %d: %s", i, got)
				}
			}
			if got := c.q(hint("t6", who)); !strings.HasPrefix(got, "E(25001:") {
				t.Errorf("another tenant inside t4's transaction: %s", got)
			}
			if got := c.q("COMMIT"); got != "C(ROLLBACK) ZI" {
				t.Errorf("COMMIT after the refused statement: %s", got)
			}
			d := tcConnect(t, s, "t6")
			if got := d.q(who); got != "D(6,t6) C(SELECT 1) ZI" {
				t.Errorf("next client: %s", got)
			}
		})
	}
}

// Session mode: a client that switches tenants (SET pgtenant.tenant) right
// after a wake gets the new tenant's shard and id; many idle clients armed
// at once are each woken; Drain and stop with clients armed leave no
// goroutine and no epoll set.
func TestHostileIdleWakeManyAndDrain(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	epolls := eventpollFds(t)
	t.Cleanup(func() {
		if got := eventpollFds(t); got != epolls {
			t.Errorf("epoll sets after the router stopped: %d, want %d", got, epolls)
		}
	})
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 120}}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	a := a8Client(t, s, "a8switch", nil)
	notifyAndSee(t, other, a, "a8switch", "before the switch")
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	if got := a.q("SET pgtenant.tenant = 't5'"); got != "C(SET) ZI" {
		t.Errorf("SET while listening: %s", got)
	}
	if got := a.q(who); !strings.HasPrefix(got, "E(0A000:") {
		t.Errorf("another node's tenant while listening: %s", got)
	}
	// (Back to t4 first; UNLISTEN would go to t4's listening backend anyway:
	// TestHostileUnlistenOtherTenant.)
	if got := a.q("SET pgtenant.tenant = 't4'"); got != "C(SET) ZI" {
		t.Errorf("SET back: %s", got)
	}
	if got := a.q("UNLISTEN *"); got != "C(UNLISTEN) ZI" {
		t.Errorf("UNLISTEN: %s", got)
	}
	if got := a.q("SET pgtenant.tenant = 't5'"); got != "C(SET) ZI" {
		t.Errorf("SET t5: %s", got)
	}
	if got := a.q(who); got != "D(5,t5) C(SELECT 1) ZI" {
		t.Errorf("switch to t5 after a wake: %s", got)
	}
	if got := a.q("SET pgtenant.tenant = 't4'; " + who + "; LISTEN a8switch"); got != "C(SET) D(4,t4) C(SELECT 1) C(LISTEN) ZI" {
		t.Errorf("back to t4: %s", got)
	}
	notifyAndSee(t, other, a, "a8switch", "after the switch")
	var many []*tc
	for i := 0; i < 100; i++ {
		many = append(many, a8Client(t, s, "a8many", nil))
	}
	if _, err := other.Exec(ctx(t), "NOTIFY a8many, 'all'"); err != nil {
		t.Fatal(err)
	}
	for i, c := range many {
		if got := c.recvNotification(); got != "all" {
			t.Fatalf("client %d of 100: %s", i, got)
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if n := s.Drain(dctx, 200*time.Millisecond); n == 0 {
		t.Errorf("Drain with session clients holding backends: 0 left")
	}
}

// A flood of notifications to an idle LISTENing client that does not
// read: its session waits to write, alone (other clients are served); once
// it reads, every notification comes, in order, and its next query is
// answered; the router stops with nothing left, though another such client
// never read.
func TestHostileIdleNotifyFlood(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	a := a8Client(t, s, "a8flood", nil)
	a8Client(t, s, "a8flood", nil) // never reads: the router stops with it waiting to write
	const n = 3000                 // of about 1 kB: more than the sockets hold
	if _, err := other.Exec(ctx(t), "SELECT pg_notify('a8flood', g || repeat('z', 1000)) FROM generate_series(1, $1::int) g", n); err != nil {
		t.Fatal(err)
	}
	b := tcConnect(t, s, "t6")
	if got := b.q("SELECT shard FROM whoami"); got != "D(6) C(SELECT 1) ZI" {
		t.Fatalf("another client during the flood: %s", got)
	}
	for i := 1; i <= n; i++ {
		if got := a.recvNotification(); !strings.HasPrefix(got, fmt.Sprint(i, "z")) {
			t.Fatalf("notification %d: %.40s", i, got)
		}
	}
	if got := a.q("SELECT 'after the flood'"); got != "D(after the flood) C(SELECT 1) ZI" {
		t.Fatalf("query after the flood: %s", got)
	}
}
