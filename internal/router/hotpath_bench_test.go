package router

import (
	"context"
	"encoding/binary"
	"net"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchmarkHotPath runs one-statement transactions through the router over a
// raw client connection (no client library in the loop, so -benchmem counts
// the router's allocations per transaction), a different tenant each time,
// in the simple and the extended protocol: the path routerbench measures.
//
//	go test ./internal/router/ -run '^$' -bench HotPath -benchmem
func BenchmarkHotPath(b *testing.B) {
	s := startRouter(b, Config{}, nil)
	tenants := []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"}
	open := func(b *testing.B) net.Conn {
		c := connect(b, s, "", pgx.QueryExecModeSimpleProtocol)
		// pgx's background reader may still wait on the socket: SyncConn
		// stops it, or it takes the router's first answer (racehang_test.go).
		if err := c.PgConn().SyncConn(context.Background()); err != nil {
			b.Fatal(err)
		}
		hj, err := c.PgConn().Hijack()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { hj.Conn.Close() })
		return hj.Conn
	}
	msg := func(buf []byte, typ byte, body ...[]byte) []byte {
		n := 4
		for _, p := range body {
			n += len(p)
		}
		buf = append(buf, typ)
		buf = binary.BigEndian.AppendUint32(buf, uint32(n))
		for _, p := range body {
			buf = append(buf, p...)
		}
		return buf
	}
	cstr := func(s string) []byte { return append([]byte(s), 0) }
	// Each request, one per tenant, is sent as is; the answer is read up to
	// ReadyForQuery.
	run := func(b *testing.B, reqs [][]byte) {
		nc := open(b)
		rd := make([]byte, 64<<10)
		roundTrip := func(req []byte) {
			if _, err := nc.Write(req); err != nil {
				b.Fatal(err)
			}
			have := 0
			for {
				n, err := nc.Read(rd[have:])
				if err != nil {
					b.Fatal(err)
				}
				have += n
				// Done when the last message is ReadyForQuery.
				if have >= 6 && rd[have-6] == 'Z' && binary.BigEndian.Uint32(rd[have-5:]) == 5 {
					if e := findError(rd[:have]); e != "" {
						b.Fatal(e)
					}
					return
				}
			}
		}
		for _, r := range reqs { // warm the pool
			roundTrip(r)
		}
		b.ReportAllocs()
		b.ResetTimer()
		i := 0
		for b.Loop() {
			roundTrip(reqs[i%len(reqs)])
			i++
		}
	}
	b.Run("simple", func(b *testing.B) {
		var reqs [][]byte
		for _, t := range tenants {
			reqs = append(reqs, msg(nil, 'Q', cstr("/* tenant: "+t+" */ SELECT val FROM items WHERE id = 1")))
		}
		run(b, reqs)
	})
	b.Run("extended", func(b *testing.B) {
		var reqs [][]byte
		for _, t := range tenants {
			var r []byte
			r = msg(r, 'P', cstr(""), cstr("/* tenant: "+t+" */ SELECT val FROM items WHERE id = $1"), []byte{0, 0})
			r = msg(r, 'B', cstr(""), cstr(""), []byte{0, 0, 0, 1, 0, 0, 0, 1, '1', 0, 0})
			r = msg(r, 'D', []byte{'P'}, cstr(""))
			r = msg(r, 'E', cstr(""), []byte{0, 0, 0, 0})
			r = msg(r, 'S')
			reqs = append(reqs, r)
		}
		run(b, reqs)
	})
}

// findError returns the message of the first ErrorResponse in msgs, if any.
func findError(msgs []byte) string {
	for len(msgs) >= 5 {
		n := int(binary.BigEndian.Uint32(msgs[1:5]))
		if n < 4 || len(msgs) < 1+n {
			return ""
		}
		if msgs[0] == 'E' {
			return string(msgs[5 : 1+n])
		}
		msgs = msgs[1+n:]
	}
	return ""
}
