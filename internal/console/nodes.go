package console

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// nodeTimeout bounds reading one node (connect, sizes, health).
const nodeTimeout = 5 * time.Second

// Metric is one health number of a node, as drawn on the overview.
type Metric struct {
	Name  string `json:"name"`
	Value string `json:"value"`
	// Warn marks a value worth a look (drawn highlighted).
	Warn bool `json:"warn,omitempty"`
}

// HealthFunc collects a node's health numbers over conn, a connection to
// the node's database that the console opened to read its shard sizes.
// NodeHealth (internal/nodestats) is the one `pgtenant console` uses.
type HealthFunc func(ctx context.Context, node string, conn *pgx.Conn) ([]Metric, error)

// nodeSample is what was read from one node.
type nodeSample struct {
	sizes  map[string]int64
	health []Metric
	err    error
}

// sample is one reading of every node and of the tenant counts.
type sample struct {
	at      time.Time
	nodes   map[string]nodeSample
	tenants map[int]int
	err     error // from the tenant counts
}

// sampler keeps the last sample for ttl; concurrent pages wait for one read.
type sampler struct {
	ttl time.Duration
	mu  sync.Mutex
	cur *sample
}

func (s *sampler) get(ctx context.Context, cat *catalog.Catalog, nodes []catalog.Node, health HealthFunc) *sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur := s.cur; cur != nil && time.Since(cur.at) < s.ttl && covers(cur, nodes) {
		return cur
	}
	smp := &sample{at: time.Now(), nodes: make(map[string]nodeSample, len(nodes))}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ns := readNode(ctx, cat, n, health)
			mu.Lock()
			smp.nodes[n.Name] = ns
			mu.Unlock()
		}()
	}
	smp.tenants, smp.err = cat.TenantCounts(ctx)
	wg.Wait()
	if ctx.Err() == nil { // a page the browser left must not cache its failures
		s.cur = smp
	}
	return smp
}

// covers reports whether a sample has every node of the list.
func covers(s *sample, nodes []catalog.Node) bool {
	for _, n := range nodes {
		if _, ok := s.nodes[n.Name]; !ok {
			return false
		}
	}
	return true
}

func readNode(ctx context.Context, cat *catalog.Catalog, n catalog.Node, health HealthFunc) nodeSample {
	ctx, cancel := context.WithTimeout(ctx, nodeTimeout)
	defer cancel()
	dsn, err := cat.ResolveDSN(n.DSN)
	if err != nil {
		return nodeSample{err: err}
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nodeSample{err: fmt.Errorf("parse connection string %s", catalog.RedactDSN(n.DSN))}
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > nodeTimeout {
		cfg.ConnectTimeout = nodeTimeout
	}
	cfg.RuntimeParams["application_name"] = "pgtenant console"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nodeSample{err: fmt.Errorf("connect to %s:%d: %w", cfg.Host, cfg.Port, err)}
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var ns nodeSample
	if ns.sizes, ns.err = catalog.SchemaSizes(ctx, conn); ns.err != nil {
		return ns
	}
	if health != nil {
		m, err := health(ctx, n.Name, conn)
		if err != nil {
			m = append(m, Metric{Name: "health", Value: err.Error(), Warn: true})
		}
		ns.health = m
	}
	return ns
}
