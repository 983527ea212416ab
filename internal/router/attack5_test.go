package router

// Hostile-client trials (session 10) that held: guards for paths no
// earlier test covered (startup packets, tenant hints, interleaved errors
// under load, what a leaving client leaves, cancel keys, server timeouts).

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// Startup packets: split across TCP writes one byte at a time; settings the
// router owns given as parameters or in options (every spelling libpq
// accepts: -c name=v, -cname=v, --name=v), ignored with a warning, except a
// session-mode client's own search_path; two tenants (options win);
// SSLRequest and GSSENCRequest repeated (each answered N); replication and
// settings the lexer cannot read refused; a client that says nothing, or
// half a packet, is closed at StartupTimeout and holds no goroutine; a
// CancelRequest sent as a message after startup ends the session as odd
// bytes do, cancelling nothing.
func TestHostileStartupHeld(t *testing.T) {
	t.Cleanup(checkNoLeak(t)) // runs after the routers stop
	const q = "SELECT shard, current_user, current_setting('search_path') FROM whoami"
	const ignored = `N(01000:startup parameter "%s" is ignored: pgtenant sets search_path and pgtenant.tenant_id to the tenant's shard) `
	const ignoredRole = `N(01000:startup parameter "%s" is ignored: the router runs a user's transactions as the role configured for that user) `
	const onT2 = "ZI | D(2,postgres,shard_0002, public, pg_temp) ZI"
	ssl, gss := []byte{0, 0, 0, 8, 4, 210, 22, 47}, []byte{0, 0, 0, 8, 4, 210, 22, 48}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, Auth: AuthTrust, StartupTimeout: time.Second}, nil)
		pathWant := fmt.Sprintf(ignored, "search_path") + onT2
		if mode == PoolSession {
			pathWant = "ZI | D(4,postgres,shard_0004) ZI" // the client's own (not for restricted users)
		}
		for _, tc := range []struct {
			name string
			pre  [][]byte
			st   []byte
			want string // after "Ok " (startup) and " | " (the query)
		}{
			{"split", nil, rawStartup("app", "pgtenant.tenant", "t2"), onT2},
			{"search_path -c", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "-c search_path=shard_0004"), pathWant},
			{"search_path --", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "--search_path=shard_0004"), pathWant},
			{"search_path -c glued", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "-csearch_path=shard_0004"), pathWant},
			{"SEARCH_PATH parameter", nil, rawStartup("app", "pgtenant.tenant", "t2", "SEARCH_PATH", "shard_0004"), pathWant},
			{"role", nil, rawStartup("app", "pgtenant.tenant", "t2", "role", "nobody"), fmt.Sprintf(ignoredRole, "role") + onT2},
			{"role -c", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "-c role=nobody"), fmt.Sprintf(ignoredRole, "role") + onT2},
			{"tenant_id", nil, rawStartup("app", "pgtenant.tenant", "t2", "pgtenant.tenant_id", "t4"), fmt.Sprintf(ignored, "pgtenant.tenant_id") + onT2},
			{"tenant_id -c", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "-c pgtenant.tenant_id=t4"), fmt.Sprintf(ignored, "pgtenant.tenant_id") + onT2},
			{"two tenants", nil, rawStartup("app", "pgtenant.tenant", "t4", "options", "-c pgtenant.tenant=t2"), onT2},
			{"SSLRequest twice", [][]byte{ssl, ssl}, rawStartup("app", "pgtenant.tenant", "t2"), onT2},
			{"GSSENCRequest, SSLRequest", [][]byte{gss, ssl}, rawStartup("app", "pgtenant.tenant", "t2"), onT2},
			{"replication", nil, rawStartup("app", "pgtenant.tenant", "t2", "replication", "database"), "E(FATAL 0A000:replication connections are not supported by the router; connect to a node directly) ERR:unexpected EOF"},
			{"client_encoding SJIS", nil, rawStartup("app", "pgtenant.tenant", "t2", "client_encoding", "SJIS"), `E(FATAL 0A000:client_encoding "SJIS" is not supported through pgtenant) ERR:unexpected EOF`},
			{"standard_conforming_strings", nil, rawStartup("app", "pgtenant.tenant", "t2", "options", "-c standard_conforming_strings=off"), `E(FATAL 0A000:standard_conforming_strings = "off" is not supported through pgtenant) ERR:unexpected EOF`},
		} {
			nc, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			for _, p := range tc.pre {
				nc.Write(p)
				b := make([]byte, 1)
				nc.SetReadDeadline(time.Now().Add(5 * time.Second))
				nc.Read(b)
				got += string(b) + " "
			}
			if tc.name == "split" {
				for _, b := range tc.st {
					nc.Write([]byte{b})
					time.Sleep(time.Millisecond)
				}
			} else {
				nc.Write(tc.st)
			}
			got += rawTranscript(t, nc, 1)
			if strings.HasSuffix(got, "ZI") {
				nc.Write(wire.Frame(nil, 'Q', []byte(q+"\x00")))
				got += " | " + rawTranscript(t, nc, 1)
			}
			want := "Ok " + tc.want
			if tc.pre != nil {
				want = "N N " + want
			}
			if strings.HasPrefix(tc.want, "E(FATAL") {
				want = tc.want
			}
			if got != want {
				t.Errorf("%s mode, %s:\n got: %s\nwant: %s", mode, tc.name, got, want)
			}
			nc.Close()
		}
		// Silent, half a packet, or a CancelRequest as a message after
		// startup (read as type 0, length 4100): closed, nothing sent back.
		cancel, _ := (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}}).Encode(nil)
		for i, raw := range [][]byte{nil, rawStartup("app")[:7], append(rawStartup("app", "pgtenant.tenant", "t2"), cancel...)} {
			nc, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			nc.Write(raw)
			if i == 2 {
				nc.(*net.TCPConn).CloseWrite() // the message's 4100 bytes never come
			}
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(nc)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("%s mode: %d bytes sent, the router still holds the connection after 10 s", mode, len(raw))
			}
			if raw == nil && len(b) > 0 {
				t.Errorf("%s mode: silent client got %q", mode, b)
			}
			nc.Close()
		}
	}
}

// Tenant hints the lexer must read as the server reads the text: inside a
// string literal, an E” string with an escaped quote, a dollar-quoted body
// (one with another tag inside), a quoted identifier, a line comment or a
// nested comment a hint is not one; ids of 10 kB, with a NUL escape, unknown,
// or the other Unicode normalisation form of a registered id (another id:
// ids are bytes, as in the catalog, so the twin is unknown).
func TestHostileTenantHintsHeld(t *testing.T) {
	nfd := "üñíçødé-租户" // NFD of oddTenants' NFC "üñíçødé-租户" (shard 3)
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode}, nil)
		c := tcConnect(t, s, "t2")
		for _, tc := range []struct{ q, want string }{
			{"SELECT '/* tenant: t4 */', shard FROM whoami", "D(/* tenant: t4 */,2) C(SELECT 1) ZI"},
			{"SELECT $$/* tenant: t4 */$$, shard FROM whoami", "D(/* tenant: t4 */,2) C(SELECT 1) ZI"},
			{"SELECT $x$ $$ /* tenant: t4 */ $x$, shard FROM whoami", "D( $$ /* tenant: t4 */ ,2) C(SELECT 1) ZI"},
			{`SELECT E'\' /* tenant: t4 */', shard FROM whoami`, "D(' /* tenant: t4 */,2) C(SELECT 1) ZI"},
			{`SELECT E'\'' /* tenant: t4 */, shard FROM whoami`, "D(',4) C(SELECT 1) ZI"},
			{"/* outer /* tenant: t4 */ still a comment */ SELECT shard FROM whoami", "D(2) C(SELECT 1) ZI"},
			{"/* outer /* inner */ /* tenant: t4 */ SELECT shard FROM whoami", "E(42601:unterminated /* comment"},
			{"SELECT shard FROM whoami -- /* tenant: t4 */", "D(2) C(SELECT 1) ZI"},
			{`SELECT "/* tenant: t4 */".shard FROM whoami AS "/* tenant: t4 */"`, "D(2) C(SELECT 1) ZI"},
			{"/* tenant: nosuch */ SELECT shard FROM whoami", `E(42704:tenant "nosuch" is unknown) ZI`},
			{"/* tenant: " + strings.Repeat("x", 10000) + " */ SELECT shard FROM whoami", "E(22023:invalid tenant id: tenant id is 10000 bytes"},
			{"/* tenant: " + nfd + " */ SELECT shard FROM whoami", "E(42704:"},
			{"/* tenant: üñíçødé-租户 */ SELECT shard FROM whoami", "D(3) C(SELECT 1) ZI"},
			{`SET pgtenant.tenant = E't2\000'`, "E(22023:invalid tenant id: tenant id contains a NUL byte) ZI"},
			{"SET pgtenant.tenant = '" + strings.Repeat("y", 10000) + "'", "E(22023:invalid tenant id: tenant id is 10000 bytes"},
			{"SET pgtenant.tenant = '" + nfd + "'", "E(42704:"},
			{"SELECT shard FROM whoami", "D(2) C(SELECT 1) ZI"},
		} {
			if got := c.q(tc.q); !strings.HasPrefix(got, tc.want) {
				t.Errorf("%s mode, %.80q:\n got: %.200s\nwant: %s", mode, tc.q, got, tc.want)
			}
		}
	}
}

// Two tenants' clients on the same two backends under load, one of them
// failing every other transaction (an error inside it, then ROLLBACK; or an
// error that aborts an implicit transaction): every statement runs on its
// own tenant's shard with its own tenant id, and exactly the committed rows
// land, each in its tenant's shard.
func TestHostileInterleavedErrorsHeld(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 4}}, nil)
			const n = 150
			run := func(tenant string, shard int, failing bool, m pgx.QueryExecMode) error {
				c := connect(t, s, tenant, m)
				defer c.Close(context.Background()) // session mode: its backend goes back
				for i := 0; i < n; i++ {
					body := fmt.Sprintf("il-%s-%d", tenant, i)
					fail := failing && i%2 == 1
					tx, err := c.Begin(ctx(t))
					if err != nil {
						return err
					}
					var sh int
					var tn string
					if err := tx.QueryRow(ctx(t), "INSERT INTO sink (body) SELECT $1::text FROM whoami RETURNING (SELECT shard FROM whoami), tenant", body).Scan(&sh, &tn); err != nil {
						return fmt.Errorf("%s insert %d: %w", tenant, i, err)
					}
					if sh != shard || tn != tenant {
						return fmt.Errorf("%s transaction %d ran on shard %d with tenant id %q", tenant, i, sh, tn)
					}
					if fail {
						if _, err := tx.Exec(ctx(t), "SELECT 1/0 FROM whoami"); pgCode(err) != "22012" {
							return fmt.Errorf("%s failing statement %d: %v", tenant, i, err)
						}
						tx.Rollback(ctx(t))
						if _, err := c.Exec(ctx(t), "INSERT INTO sink (body) SELECT 'il-never' FROM whoami WHERE 1/0 = 1"); pgCode(err) != "22012" {
							return fmt.Errorf("%s implicit failing statement %d: %v", tenant, i, err)
						}
						continue
					}
					if err := tx.Commit(ctx(t)); err != nil {
						return err
					}
				}
				return nil
			}
			errs := make(chan error, 4)
			go func() { errs <- run("t2", 2, true, pgx.QueryExecModeCacheStatement) }()
			go func() { errs <- run("t4", 4, false, pgx.QueryExecModeExec) }()
			go func() { errs <- run("t6", 6, true, pgx.QueryExecModeSimpleProtocol) }()
			go func() { errs <- run("t8", 0, false, pgx.QueryExecModeDescribeExec) }()
			for i := 0; i < 4; i++ {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
			for _, tc := range []struct {
				tenant string
				want   int
			}{{"t2", n / 2}, {"t4", n}, {"t6", n / 2}, {"t8", n}} {
				c := connect(t, s, tc.tenant, pgx.QueryExecModeExec)
				var rows, mine int
				if err := c.QueryRow(ctx(t), "SELECT count(*), count(*) FILTER (WHERE tenant = $1 AND body LIKE 'il-' || $1 || '-%') FROM sink WHERE body LIKE 'il-%'", tc.tenant).Scan(&rows, &mine); err != nil {
					t.Fatal(err)
				}
				if rows != tc.want || mine != tc.want {
					t.Errorf("%s's shard: %d rows, %d of them its own; want %d", tc.tenant, rows, mine, tc.want)
				}
				c.Exec(ctx(t), "DELETE FROM sink WHERE body LIKE 'il-%'")
				c.Close(ctx(t))
			}
		})
	}
}

// What a session-mode client leaves when it goes: a session advisory lock,
// LISTEN, SQL PREPARE, a setting, a temporary table, a cursor WITH HOLD are
// gone for the next client of the backend (DISCARD ALL). In both modes a
// client gone inside a transaction (a row lock, an advisory transaction
// lock) or inside an extended-protocol COPY after its Sync (libpq's) leaves
// nothing: the backend is closed, its work rolled back.
func TestHostileSessionLeaveHeld(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			if mode == PoolSession {
				a := tcConnect(t, s, "t2")
				for _, q := range []string{"SELECT pg_advisory_lock(7) FROM whoami", "LISTEN hleave", "PREPARE hleave AS SELECT 1",
					"SET work_mem = '64kB'", "CREATE TEMP TABLE hleave (x int)", "BEGIN", "DECLARE hleave CURSOR WITH HOLD FOR SELECT 1", "COMMIT"} {
					if got := a.q(q); strings.Contains(got, "E(") {
						t.Fatalf("%s: %s", q, got)
					}
				}
				a.pc.Close(ctx(t))
				b := tcConnect(t, s, "t2")
				if got := b.q(`SELECT (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'), (SELECT count(*) FROM pg_listening_channels()),
	(SELECT count(*) FROM pg_prepared_statements WHERE name = 'hleave'), current_setting('work_mem'), (SELECT count(*) FROM pg_cursors),
	to_regclass('pg_temp.hleave') IS NULL FROM whoami`); got != "D(0,0,0,4MB,0,t) C(SELECT 1) ZI" {
					t.Errorf("next client after one that left state behind: %s", got)
				}
				b.pc.Close(ctx(t))
			}
			a := tcConnect(t, s, "t2")
			for _, q := range []string{"BEGIN", "UPDATE items SET val = 'hleave' WHERE id = 1", "SELECT pg_advisory_xact_lock(8) FROM whoami"} {
				if got := a.q(q); strings.Contains(got, "E(") {
					t.Fatalf("%s: %s", q, got)
				}
			}
			a.pc.Close(ctx(t))
			c := tcConnect(t, s, "t2")
			c.send(&pgproto3.Parse{Query: "COPY sink (body) FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
			if got := recvUntil[*pgproto3.CopyInResponse](c); got != "P B *pgproto3.CopyInResponse" {
				t.Fatalf("COPY: %s", got)
			}
			c.send(&pgproto3.CopyData{Data: []byte("hleave\n")})
			c.pc.Close(ctx(t))
			b := tcConnect(t, s, "t2")
			b.q("SET lock_timeout = '5s'")
			if got := b.q("SELECT pg_advisory_xact_lock(8), (SELECT val FROM items WHERE id = 1 FOR UPDATE), (SELECT count(*) FROM sink WHERE body = 'hleave') FROM whoami"); got != "D(,shard2-1,0) C(SELECT 1) ZI" {
				t.Errorf("next client after one gone inside a transaction and one inside a COPY: %s", got)
			}
		})
	}
}

// sendCancel sends a CancelRequest to the router at addr and waits until
// the router has closed the connection (it has handled the request then).
func sendCancel(t *testing.T, addr string, req *pgproto3.CancelRequest) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	buf, err := req.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write(buf)
	io.Copy(io.Discard, nc)
}

// Cancel requests that must cancel nothing: a zero key, the client's
// process id with a zero secret, the client's own key sent to another
// router over the same nodes (routers share no keys: that cancel is lost,
// see docs/architecture.md); and a cancel sent while the client's
// statement waits for a backend from the pool (that one ends with 57014
// since session 11, TestHostileCancelWhileWaitingForPool; the next runs).
func TestHostileCancelHeld(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	other := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	a.send(&pgproto3.Query{String: "SELECT 'done' FROM whoami, pg_sleep(1.5)"})
	waitActive(t, "pg_sleep(1.5)", 10*time.Second)
	sendCancel(t, s.Addr().String(), &pgproto3.CancelRequest{ProcessID: 0, SecretKey: make([]byte, 4)})
	sendCancel(t, s.Addr().String(), &pgproto3.CancelRequest{ProcessID: a.pc.PID(), SecretKey: make([]byte, 4)})
	sendCancel(t, other.Addr().String(), &pgproto3.CancelRequest{ProcessID: a.pc.PID(), SecretKey: a.pc.SecretKey()})
	if got := a.recv(1); got != "D(done) C(SELECT 1) ZI" {
		t.Fatalf("statement after cancels with wrong keys: %s", got)
	}
	h := tcConnect(t, s, "t2")
	h.q("BEGIN")
	h.q("SELECT 1 FROM whoami") // holds the only backend
	a.send(&pgproto3.Query{String: "SELECT 'waited' FROM whoami"})
	if !waitPoolWaiting(s, 10*time.Second) {
		t.Fatal("a's statement is not waiting for the pool")
	}
	sendCancel(t, s.Addr().String(), &pgproto3.CancelRequest{ProcessID: a.pc.PID(), SecretKey: a.pc.SecretKey()})
	h.q("COMMIT")
	got := a.recv(1)
	got += " | " + a.q("SELECT 'next' FROM whoami")
	t.Logf("cancel while waiting for the pool: %s", got)
	if !strings.HasSuffix(got, " | D(next) C(SELECT 1) ZI") {
		t.Fatalf("statements after a cancel sent while waiting for the pool: %s", got)
	}
}

// Server-side timeouts a client sets: statement_timeout (57014),
// lock_timeout (55P03), idle_in_transaction_session_timeout (the server
// ends the backend: FATAL 25P03, the client's connection closes, as from
// PostgreSQL), idle_session_timeout (transaction mode: the backend, idle in
// the pool, ends and is replaced unseen; session mode: FATAL 57P05). The
// next client has none of them.
func TestHostileTimeoutsHeld(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			lock, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Close(context.Background())
			tx, err := lock.Begin(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx(t), "SELECT * FROM shard_0002.items WHERE id = 2 FOR UPDATE"); err != nil {
				t.Fatal(err)
			}
			a := tcConnect(t, s, "t2")
			for _, tc := range []struct{ q, want string }{
				{"SET statement_timeout = '50ms'", "C(SET) ZI"},
				{"SELECT pg_sleep(5) FROM whoami", "E(57014:canceling statement due to statement timeout) ZI"},
				{"SET statement_timeout = 0", "C(SET) ZI"},
				{"SET lock_timeout = '50ms'", "C(SET) ZI"},
				{"UPDATE items SET val = val WHERE id = 2", "E(55P03:canceling statement due to lock timeout) ZI"},
				{"SET idle_in_transaction_session_timeout = '100ms'", "C(SET) ZI"},
				{"BEGIN", "C(BEGIN) ZT"},
				{"SELECT shard FROM whoami", "D(2) C(SELECT 1) ZT"},
			} {
				if got := a.q(tc.q); got != tc.want {
					t.Fatalf("%s: %s, want %s", tc.q, got, tc.want)
				}
			}
			tx.Rollback(ctx(t))
			time.Sleep(500 * time.Millisecond) // past the server's idle-in-transaction timeout
			if got := a.q("SELECT shard FROM whoami"); !strings.HasPrefix(got, "E(25P03:terminating connection due to idle-in-transaction timeout) ERR:") {
				t.Fatalf("after the idle-in-transaction timeout: %s", got)
			}
			b := tcConnect(t, s, "t2")
			if got := b.q("SELECT shard, current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_in_transaction_session_timeout') FROM whoami"); got != "D(2,0,0,0) C(SELECT 1) ZI" {
				t.Fatalf("next client: %s", got)
			}
			b.q("SET idle_session_timeout = '100ms'")
			time.Sleep(500 * time.Millisecond)
			got := b.q("SELECT shard FROM whoami")
			want := "D(2) C(SELECT 1) ZI"
			if mode == PoolSession {
				want = "E(57P05:terminating connection due to idle-session timeout) ERR:"
			}
			if !strings.HasPrefix(got, want) {
				t.Fatalf("after the idle-session timeout: %s, want %s", got, want)
			}
			b.pc.Close(ctx(t))
			c := tcConnect(t, s, "t2")
			if got := c.q("SELECT shard, current_setting('idle_session_timeout') FROM whoami"); got != "D(2,0) C(SELECT 1) ZI" {
				t.Fatalf("next client: %s", got)
			}
		})
	}
}

// COPY paths compared with PostgreSQL's own answers: a simple COPY
// skipped after an error in an unsynced pipeline (its data, sent ahead,
// dropped); COPY of a missing table with data sent ahead, in both
// protocols; CopyFail and a bad row inside a transaction block; COPY TO
// STDOUT in the extended protocol; two COPYs in one Query string.
func TestHostileCopyHeld(t *testing.T) {
	eachTarget(t, func(c *tc) string {
		var out []string
		// An error before a simple COPY in an unsynced pipeline, data sent ahead.
		c.send(&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
			&pgproto3.Query{String: "COPY sink (body) FROM STDIN"}, &pgproto3.CopyData{Data: []byte("cm1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// COPY of a missing table with data sent ahead, then a query
		c.send(&pgproto3.Query{String: "COPY nosuch FROM STDIN"}, &pgproto3.CopyData{Data: []byte("cm2\n")}, &pgproto3.CopyData{Data: []byte("cm3\n")}, &pgproto3.CopyDone{},
			&pgproto3.Query{String: "SELECT 'after'"})
		out = append(out, c.recv(2))
		// extended COPY of a missing table, data + Sync ahead
		c.send(&pgproto3.Parse{Query: "COPY nosuch FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.CopyData{Data: []byte("cm4\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}, &pgproto3.Query{String: "SELECT 'after2'"})
		out = append(out, c.recv(3))
		// in a transaction: COPY fails, ROLLBACK
		out = append(out, c.q("BEGIN"))
		c.send(&pgproto3.Query{String: "COPY sink (body) FROM STDIN"})
		out = append(out, recvUntil[*pgproto3.CopyInResponse](c))
		c.send(&pgproto3.CopyData{Data: []byte("cm5\n")}, &pgproto3.CopyFail{Message: "no"})
		out = append(out, c.recv(1))
		out = append(out, c.q("SELECT 1"))
		out = append(out, c.q("ROLLBACK"))
		// extended in a transaction with bad row, then Sync
		out = append(out, c.q("BEGIN"))
		c.send(&pgproto3.Parse{Query: "COPY sink (id, body) FROM STDIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, recvUntil[*pgproto3.CopyInResponse](c))
		c.send(&pgproto3.CopyData{Data: []byte("x\tcm6\n")}, &pgproto3.CopyData{Data: []byte("1\tcm7\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		out = append(out, c.q("ROLLBACK"))
		// COPY TO STDOUT extended with Sync
		c.send(&pgproto3.Parse{Query: "COPY (SELECT 'cm8') TO STDOUT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		out = append(out, c.recv(1))
		// two COPYs in one Query string
		c.send(&pgproto3.Query{String: "COPY sink (body) FROM STDIN; COPY sink (body) FROM STDIN"})
		out = append(out, recvUntil[*pgproto3.CopyInResponse](c))
		c.send(&pgproto3.CopyData{Data: []byte("cm9\n")}, &pgproto3.CopyDone{})
		out = append(out, recvUntil[*pgproto3.CopyInResponse](c))
		c.send(&pgproto3.CopyData{Data: []byte("cm10\n")}, &pgproto3.CopyDone{})
		out = append(out, c.recv(1))
		out = append(out, c.q("SELECT string_agg(body, ',' ORDER BY body) FROM sink WHERE body LIKE 'cm%'"))
		out = append(out, c.q("DELETE FROM sink WHERE body LIKE 'cm%'"))
		return strings.Join(out, " | ")
	})
}
