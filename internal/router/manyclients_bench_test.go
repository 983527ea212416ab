package router

import (
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkManyClients: 1,000 raw clients in a closed loop, each sending a
// one-query transaction (a tenant by hint) as soon as its last one is
// answered, through a router with 20 backend connections: nearly every
// checkout waits for a release, as routerbench -many 1000 does with pgbench.
// Sub-benchmarks lifo (the pool's default hand-off, see PoolConfig.FairAfter)
// and fifo (FairAfter negative), on a router each, run as fifo, lifo, lifo,
// fifo three times over (the machine's drift falls on both). cpu-ns/op is this process's CPU per transaction (the router's and
// its clients'), the figure to compare; ns/op swings with the machine's load.
//
//	go test ./internal/router/ -run '^$' -bench ManyClients -benchtime 20000x -count 1
func BenchmarkManyClients(b *testing.B) {
	const clients = 1000
	var reqs [][]byte
	for i := 0; i < 8; i++ {
		reqs = append(reqs, hotQuery(fmt.Sprintf("/* tenant: t%d */ SELECT val FROM items WHERE id = 1", i)))
	}
	// Two routers: the pool's default hand-off (the last waiter first,
	// within FairAfter) and first come, first served.
	open := func(fair time.Duration) []*hotClient {
		s := startRouter(b, Config{Auth: AuthTrust, MaxClients: clients + 10, Pool: PoolConfig{FairAfter: fair}}, nil)
		conns := make([]*hotClient, clients)
		for i := range conns {
			c, err := rawConnect(s)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			conns[i] = &hotClient{nc: c, rd: make([]byte, 4<<10)}
			if err := conns[i].try(reqs[i%len(reqs)]); err != nil { // the session served once
				b.Fatal(err)
			}
		}
		return conns
	}
	lifo, fifo := open(0), open(-1)
	for _, name := range strings.Split(strings.Repeat("fifo lifo lifo fifo ", 3), " ")[:12] {
		conns := lifo
		if name == "fifo" {
			conns = fifo
		}
		b.Run(name, func(b *testing.B) {
			var left atomic.Int64
			left.Store(int64(b.N))
			var wg sync.WaitGroup
			var failed atomic.Pointer[error]
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i, c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for left.Add(-1) >= 0 {
						if err := c.try(reqs[i%len(reqs)]); err != nil {
							failed.CompareAndSwap(nil, &err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			if err := failed.Load(); err != nil {
				b.Fatal(*err)
			}
		})
	}
}

// try is roundTrip for a goroutine other than the test's: it returns the
// error.
func (rc *hotClient) try(req []byte) error {
	if _, err := rc.nc.Write(req); err != nil {
		return err
	}
	have := 0
	for {
		n, err := rc.nc.Read(rc.rd[have:])
		if err != nil {
			return err
		}
		have += n
		if have >= 6 && rc.rd[have-6] == 'Z' && binary.BigEndian.Uint32(rc.rd[have-5:]) == 5 {
			if e := findError(rc.rd[:have]); e != "" {
				return fmt.Errorf("%s", e)
			}
			return nil
		}
	}
}
