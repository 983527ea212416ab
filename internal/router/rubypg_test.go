package router

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// libpq's large-object API (lo_creat, lo_open, lo_write, ..., what
// ruby-pg's lo_* and Rails' ActiveStorage-era code call) sends
// FunctionCall messages. Large objects live in the database, in no shard
// schema (a move would leave them behind, and any tenant could open one
// by its oid), so the router refuses the function call protocol, but as a
// server refuses a statement: 0A000 and ReadyForQuery, the session going
// on (inside a transaction, failed as after a server error). It used to
// end the session with FATAL 08P01 "invalid frontend message type", so
// every later statement of ruby-pg's spec suite failed with "no
// connection to the server".
func TestFunctionCallRefused(t *testing.T) {
	loCreat := &pgproto3.FunctionCall{Function: 957, ArgFormatCodes: []uint16{1},
		Arguments: [][]byte{binary.BigEndian.AppendUint32(nil, 0x60000)}, ResultFormatCode: 1}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			fe, nc := rawConn(t, s, "t1")

			fe.Send(loCreat)
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got, want := readUntilRFQ(t, fe, nc), []string{"E 0A000", "Z I"}; !slices.Equal(got, want) {
				t.Fatalf("function call outside a transaction: got %v, want %v", got, want)
			}

			fe.Send(&pgproto3.Query{String: "BEGIN"})
			fe.Send(&pgproto3.Query{String: "SELECT 1"})
			fe.Send(loCreat)
			fe.Send(&pgproto3.Query{String: "SELECT 2"})
			fe.Send(&pgproto3.Query{String: "ROLLBACK"})
			fe.Send(&pgproto3.Query{String: "SELECT (SELECT shard FROM whoami)::text"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, want := range [][]string{
				{"C", "Z T"},
				{"T", "D 1", "C", "Z T"},
				{"E 0A000", "Z E"},
				{"E 25P02", "Z E"},
				{"C", "Z I"},
				{"T", "D " + strconv.Itoa(shardOf("t1")), "C", "Z I"},
			} {
				if got := readUntilRFQ(t, fe, nc); !slices.Equal(got, want) {
					t.Fatalf("answer %d: got %v, want %v", i, got, want)
				}
			}
		})
	}
}

// Rows the server sent reach the client while the statement still runs
// (libpq's single-row mode, ruby-pg's "should receive rows before entire
// query is finished"). The server flushes its output in 8 KiB blocks that
// end inside a message: the router read the block, relayed the whole
// messages into the client's write buffer, and then waited for the rest of
// the cut message without flushing them (it flushed only when nothing at
// all was buffered from the server), so the client saw no row until the
// statement ended. Here the statement's last row waits on an advisory lock
// the test holds: the first row must arrive before the lock is released.
func TestRowsStreamBeforeStatementEnds(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			lock, err := pgx.Connect(ctx(t), nodeDSN(nodeA)) // t0's node
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Close(ctx(t))
			if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_lock(72101)"); err != nil {
				t.Fatal(err)
			}
			unlocked := false
			unlock := func() {
				if !unlocked {
					unlocked = true
					if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_unlock(72101)"); err != nil {
						t.Error(err)
					}
				}
			}
			defer unlock()

			pc := pcConnect(t, s, "t0")
			first := make(chan string, 1)
			done := make(chan error, 1)
			go func() {
				mrr := pc.Exec(ctx(t), "SELECT g::text FROM generate_series(1, 1000) g UNION ALL SELECT pg_advisory_xact_lock(72101)::text")
				if !mrr.NextResult() {
					done <- mrr.Close()
					return
				}
				rr := mrr.ResultReader()
				n := 0
				for rr.NextRow() {
					if n == 0 {
						first <- string(rr.Values()[0])
					}
					n++
				}
				_, err := rr.Close()
				if err == nil {
					err = mrr.Close()
				}
				if err == nil && n != 1001 {
					err = fmt.Errorf("got %d rows, want 1001", n)
				}
				done <- err
			}()
			select {
			case v := <-first:
				if v != "1" {
					t.Errorf("first row %q, want 1", v)
				}
			case err := <-done:
				t.Fatalf("the statement ended while the lock was held: %v", err)
			case <-time.After(20 * time.Second):
				// Not a timing bound: without streaming the row never comes
				// while the lock is held.
				t.Errorf("no row reached the client while the statement waited on the lock")
			}
			unlock()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A client_encoding that names no encoding gets the server's error, 22023
// "invalid value for parameter" (ruby-pg's set_client_encoding spec, and
// any driver that maps it to an argument error), not the router's 0A000
// refusal of the encodings it cannot read statements in, which still
// holds for those; at startup too.
func TestClientEncodingInvalidName(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	pc := pcConnect(t, s, "t1")
	for _, tc := range []struct{ sql, code string }{
		{"SET client_encoding = 'invalid'", "22023"},
		{"SET NAMES 'no-such-encoding'", "22023"},
		{"SET client_encoding = 'SJIS'", "0A000"},
		{"SET client_encoding TO 'windows-950'", "0A000"},
		{"SET client_encoding = 'LATIN1'", ""},
		{"SET client_encoding = 'UTF8'", ""},
	} {
		_, err := pc.Exec(ctx(t), tc.sql).ReadAll()
		if got := pgCode(err); got != tc.code {
			t.Errorf("%s: got %q (%v), want %q", tc.sql, got, err, tc.code)
		}
	}
	if got := pcValue(t, pc, "SHOW client_encoding"); got != "UTF8" {
		t.Errorf("client_encoding %q, want UTF8", got)
	}
	for enc, code := range map[string]string{"invalid": "22023", "BIG5": "0A000"} {
		_, err := pgconn.Connect(ctx(t), routerURL(s, "t1")+"&client_encoding="+enc)
		if got := pgCode(err); got != code {
			t.Errorf("startup client_encoding=%s: got %q (%v), want %q", enc, got, err, code)
		}
	}
}

// BenchmarkBigResult reads a 20,000-row result (2.3 MB) through the router:
// the relay of a large result, where the client is flushed before every
// read of the server that would wait for the rest of a cut message (see
// TestRowsStreamBeforeStatementEnds; bench/README.md "Session 10: rubypg").
func BenchmarkBigResult(b *testing.B) {
	s := startRouter(b, Config{}, nil)
	c := connect(b, s, "t0", pgx.QueryExecModeSimpleProtocol)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rows, err := c.Query(ctx(b), "SELECT repeat('x', 100) FROM generate_series(1, 20000)")
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil || n != 20000 {
			b.Fatalf("%d rows, %v", n, err)
		}
	}
}
