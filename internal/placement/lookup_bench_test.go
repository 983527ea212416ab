package placement

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// cacheDir is a Directory answering from a TenantCache, as the catalog's
// does once a tenant is cached.
type cacheDir struct{ c *TenantCache }

func (d cacheDir) TenantShard(_ context.Context, tenant string) (int, error) {
	if s, ok := d.c.Get(tenant); ok {
		return s, nil
	}
	return 0, ErrDirectoryUnavailable
}

// BenchmarkLookup is the cost of finding a tenant's location: Lookup with
// the tenant in the map's Tenants or in a Directory over a TenantCache, and
// LocateIn (speed16: a transaction's checkout after SET LOCAL found the
// shard). 1,000 tenants, 16 shards on 2 nodes; warm caches.
func BenchmarkLookup(b *testing.B) {
	const tenants, shards = 1000, 16
	inMap := &Map{Nodes: map[string]Node{"a": {Name: "a"}, "b": {Name: "b"}}, Tenants: map[string]int{}}
	for i := 0; i < shards; i++ {
		inMap.Shards = append(inMap.Shards, Shard{ID: i, Schema: SchemaName(i), Node: string(rune('a' + i%2))})
	}
	cache := NewTenantCache(10000, time.Minute)
	ids := make([]string, tenants)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
		inMap.Tenants[ids[i]] = i % shards
		cache.PutAt(ids[i], i%shards, cache.Epoch())
	}
	inDir := *inMap
	inDir.Tenants = nil
	inDir.Directory = cacheDir{cache}
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		m    *Map
	}{{"tenants", inMap}, {"directory", &inDir}} {
		b.Run("Lookup/"+bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := bc.m.Lookup(ctx, ids[i%tenants]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("LocateIn", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if _, err := inMap.LocateIn(ids[i%tenants], (i%tenants)%shards); err != nil {
				b.Fatal(err)
			}
		}
	})
}
