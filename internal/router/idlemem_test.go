package router

import (
	"net"
	"runtime"
	"testing"

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
