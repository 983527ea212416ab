package router

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Transaction-mode round trips over a raw client connection, simple and
// extended, many in a row from several clients at once: each answer reaches
// the client whole (t1's row), up to its ReadyForQuery and nothing after. A round trip that gets no
// answer (the router holding it unflushed while it waits for the client)
// fails with the goroutines' stacks instead of hanging; the deadline only
// turns a hang into a failure. PGTENANT_RACEHANG_N sets the round trips per
// client (default 300); run it with -race and -cpu 1,2 to look for the hang
// once seen in TestSessionRoundTripAllocations.
func TestTxnRoundTripsAnswered(t *testing.T) {
	n := 300
	if v := os.Getenv("PGTENANT_RACEHANG_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("PGTENANT_RACEHANG_N: %v", err)
		}
	}
	const clients = 3
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	for _, q := range []struct {
		name string
		req  []byte
	}{
		{"simple", rhEncode(t, &pgproto3.Query{String: "SELECT val FROM items WHERE id = 1"})},
		{"extended", rhEncode(t, &pgproto3.Parse{Query: "SELECT val FROM items WHERE id = $1"},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}}, &pgproto3.Describe{ObjectType: 'P'},
			&pgproto3.Execute{}, &pgproto3.Sync{})},
	} {
		t.Run(q.name, func(t *testing.T) {
			cs := make([]*rhClient, clients)
			for i := range cs {
				cs[i] = rhOpen(t, s, "t1")
			}
			var wg sync.WaitGroup
			errs := make([]error, clients)
			for i, c := range cs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := 0; j < n; j++ {
						if err := c.roundTrip(q.req, "shard1-1"); err != nil {
							errs[i] = fmt.Errorf("client %d, round trip %d: %w", i, j, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// rhClient is a client connection through the router, read and written
// without a client library.
type rhClient struct {
	nc net.Conn
	rd []byte
}

// rhOpen connects to s with tenant and takes over the socket. SyncConn
// first: pgx may have a background reader parked in a read of the socket
// (started when one of its writes took over 15 ms), which would take the
// first answer the router sends after the hijack.
func rhOpen(t *testing.T, s *Server, tenant string) *rhClient {
	c := connect(t, s, tenant, pgx.QueryExecModeSimpleProtocol)
	if err := c.PgConn().SyncConn(ctx(t)); err != nil {
		t.Fatal(err)
	}
	hj, err := c.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hj.Conn.Close() })
	return &rhClient{nc: hj.Conn, rd: make([]byte, 64<<10)}
}

// rhWait bounds the wait for one answer: only a hang reaches it.
const rhWait = 60 * time.Second

// roundTrip sends req and reads the answer up to ReadyForQuery, message by
// message: one row whose first column is want. When no answer comes it
// returns the goroutines' stacks.
func (rc *rhClient) roundTrip(req []byte, want string) error {
	if _, err := rc.nc.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	rc.nc.SetReadDeadline(time.Now().Add(rhWait))
	have, off := 0, 0
	var rows []string
	for {
		for have-off >= 5 {
			n := int(binary.BigEndian.Uint32(rc.rd[off+1:]))
			if n < 4 || have-off < 1+n {
				break
			}
			typ, body := rc.rd[off], rc.rd[off+5:off+1+n]
			off += 1 + n
			if typ == 'D' && len(body) >= 6 {
				k := int(int32(binary.BigEndian.Uint32(body[2:])))
				rows = append(rows, string(body[6:6+max(k, 0)]))
			}
			if typ == 'Z' {
				if e := findError(rc.rd[:off]); e != "" {
					return errors.New(e)
				}
				if len(rows) != 1 || rows[0] != want {
					return fmt.Errorf("rows %q, want [%q]", rows, want)
				}
				if off != have {
					return fmt.Errorf("%d bytes after ReadyForQuery: %q", have-off, rc.rd[off:have])
				}
				return nil
			}
		}
		if have == len(rc.rd) {
			return fmt.Errorf("answer over %d bytes", have)
		}
		n, err := rc.nc.Read(rc.rd[have:])
		have += n
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			var dump bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&dump, 2)
			return fmt.Errorf("no ReadyForQuery in %s (%d bytes read: %q); goroutines:\n%s", rhWait, have, rc.rd[:have], dump.String())
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
	}
}

// rhEncode is msgs encoded one after another.
func rhEncode(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}
