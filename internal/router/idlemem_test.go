package router

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestIdleClientMemory: a client the router waits for holds no read or write
// buffer (32 KiB + 16 KiB before), so thousands of idle connections cost
// little heap. The clients ran a query first, so their buffers were used.
func TestIdleClientMemory(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	const n = 100
	open := func() net.Conn {
		pc, err := pgconn.Connect(ctx(t), routerURL(s, "t1"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pc.Exec(ctx(t), "SELECT val FROM items WHERE id = 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		hc, err := pc.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		c := hc.Conn // not hc: its Frontend holds pgproto3's buffers
		t.Cleanup(func() { c.Close() })
		return c
	}
	open() // the pools and the backend
	heap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC() // and what sync.Pools kept
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	for i := 0; i < n; i++ {
		open()
	}
	per := (float64(heap()) - float64(before)) / n / 1024
	t.Logf("heap per idle client: %.1f KiB (router session and the test's hijacked connection)", per)
	if per > 16 {
		t.Errorf("heap per idle client %.1f KiB, want at most 16 KiB (no read or write buffer held while idle)", per)
	}
}

// rawClient connects to s with trust authentication as user app, database
// pgt, tenant t1, and reads up to the first ReadyForQuery: a client that
// holds no buffer or goroutine of its own in the test process.
func rawClient(t testing.TB, s *Server) net.Conn {
	t.Helper()
	c, err := rawConnect(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rawConnect is rawClient without a test: the caller closes the connection.
func rawConnect(s *Server) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", s.Addr().String(), time.Minute)
	if err != nil {
		return nil, err
	}
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608)
	for _, kv := range []string{"user", testUser, "database", "pgt", "options", "-c pgtenant.tenant=t1"} {
		body = append(append(body, kv...), 0)
	}
	body = append(body, 0)
	if _, err := c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)); err != nil {
		c.Close()
		return nil, err
	}
	if _, err := rawReadReady(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("startup: %w", err)
	}
	return c, nil
}

// rawReadReady reads c's messages up to a ReadyForQuery and returns the
// first column of the first DataRow, if any; an ErrorResponse is an error.
func rawReadReady(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(2 * time.Minute))
	defer c.SetReadDeadline(time.Time{})
	var hdr [5]byte
	var failed error
	var val string
	var row bool
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return "", err
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(c, b); err != nil {
			return "", err
		}
		switch hdr[0] {
		case 'D':
			if !row && len(b) >= 6 && binary.BigEndian.Uint16(b) > 0 {
				if n := int32(binary.BigEndian.Uint32(b[2:])); n >= 0 && 6+int(n) <= len(b) {
					val, row = string(b[6:6+n]), true
				}
			}
		case 'E':
			if failed == nil {
				failed = fmt.Errorf("error response: %q", b)
			}
		case 'Z':
			return val, failed
		}
	}
}

// rawQuery sends one simple Query on c and returns the first column of its
// first row.
func rawQuery(c net.Conn, sql string) (string, error) {
	msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(len(sql)+5))...)
	msg = append(append(msg, sql...), 0)
	if _, err := c.Write(msg); err != nil {
		return "", err
	}
	return rawReadReady(c)
}

// TestConnectNoWriteBuffer: a connection storm allocates no 32 KiB client
// write buffer per connection: a session takes one from the pool shared with
// the idle clients' (serve), where it allocated a new one before.
func TestConnectNoWriteBuffer(t *testing.T) {
	s := startRouter(t, Config{Auth: AuthTrust}, nil)
	const n = 200
	rawQuery(rawClient(t, s), "SELECT 1")
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := 0; i < n; i++ {
		c := rawClient(t, s)
		if _, err := rawQuery(c, "SELECT val FROM items WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&m1)
	per := float64(m1.TotalAlloc-m0.TotalAlloc) / n / 1024
	t.Logf("allocated per connection: %.1f KiB", per)
	if raceDetector {
		// Every connection above still ran its query; only the bound is
		// off: under -race sync.Pool drops pooled buffers at random, so
		// sessions allocate fresh write buffers.
		t.Logf("bound of 24 KiB not checked under -race (sync.Pool drops items)")
		return
	}
	if per > 24 {
		t.Errorf("allocated %.1f KiB per connection, want under 24 KiB (no new 32 KiB write buffer per client)", per)
	}
}
