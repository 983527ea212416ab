// Package placement is the tenant → shard → node map: the hash that places a
// tenant in a shard, and an immutable snapshot of the catalog's map that
// routers read without locks. It does no I/O; the catalog package loads
// snapshots and keeps them fresh.
package placement

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnknownTenant is returned by Map.Locate for a tenant the catalog does not know.
var ErrUnknownTenant = errors.New("unknown tenant")

// ErrDirectoryUnavailable is wrapped by a Directory's errors when it cannot
// tell whether a tenant is registered (the catalog did not answer).
var ErrDirectoryUnavailable = errors.New("the catalog did not answer")

// Shard states.
const (
	// StateActive shards serve traffic on their node.
	StateActive = "active"
	// StateFenced shards are being moved: routers hold new transactions for them
	// until the state changes back or the shard's node flips.
	StateFenced = "fenced"
)

// Node is one physical Postgres server.
type Node struct {
	Name string
	// DSN is the connection string pgtenant uses to reach the node's database.
	DSN string
}

// Shard is one logical shard: a schema on a node.
type Shard struct {
	ID     int
	Schema string
	Node   string
	// State is StateActive or StateFenced.
	State string
	// Epoch increases every time the shard changes node.
	Epoch int64
	// Target is the node the shard's running move will flip it to (maps
	// loaded from the catalog); empty without a move. Routers open and
	// prime connections to it before the flip (pre-warming).
	Target string
	// SchemaPerTenant: each tenant of the shard has a schema of its own
	// (the shard is served from a legacy database with a schema per tenant
	// during an import): Lookup gives a tenant's Location that schema
	// (Map.TenantSchemas, else the tenant id); Schema is the template's.
	SchemaPerTenant bool
}

// Map is an immutable snapshot of the placement. Do not modify it after it is
// published; build a new one instead.
type Map struct {
	// Version is the catalog's map version this snapshot was read at.
	Version int64
	// Shards is indexed by shard id; len(Shards) is the shard count.
	Shards []Shard
	// Nodes by name.
	Nodes map[string]Node
	// Tenants maps a tenant id to its shard id, for maps built in memory
	// (tests, benchmarks). Maps loaded from the catalog leave it empty and
	// set Directory: they hold shards and nodes only, so their size does
	// not grow with the number of tenants.
	Tenants map[string]int
	// Directory, when set, answers for tenants not in Tenants (see Lookup).
	Directory Directory
	// FencedTenants maps each tenant a tenant move has fenced to the shard
	// it was in when fenced: routers hold its new transactions (and only
	// its) until a map without it. Nil when no tenant is fenced.
	FencedTenants map[string]int
	// TenantSchemas names the schema of a tenant of a SchemaPerTenant shard
	// whose schema is not named like the tenant id. Nil otherwise.
	TenantSchemas map[string]string
}

// Directory tells whether a tenant is registered and in which shard. The
// catalog's implementation asks the catalog on demand and keeps a bounded
// cache that NOTIFY payloads invalidate.
type Directory interface {
	// TenantShard returns tenant's shard, or an error wrapping
	// ErrUnknownTenant, or another error when it cannot tell.
	TenantShard(ctx context.Context, tenant string) (int, error)
}

// Location is where one tenant lives.
type Location struct {
	Tenant string
	Shard  Shard
	Node   Node
}

// Locate returns where tenant lives, or an error wrapping ErrUnknownTenant.
// It may ask the map's Directory (see Lookup) with a background context.
func (m *Map) Locate(tenant string) (Location, error) {
	return m.Lookup(context.Background(), tenant)
}

// Lookup returns where tenant lives: its shard from Tenants, else from the
// Directory (which may do I/O bounded by ctx), then the shard's node from
// this snapshot. An unregistered tenant gets an error wrapping
// ErrUnknownTenant.
func (m *Map) Lookup(ctx context.Context, tenant string) (Location, error) {
	id, ok := m.Tenants[tenant]
	if !ok {
		if m.Directory == nil {
			return Location{}, fmt.Errorf("tenant %q: %w", tenant, ErrUnknownTenant)
		}
		var err error
		if id, err = m.Directory.TenantShard(ctx, tenant); err != nil {
			return Location{}, err
		}
	}
	return m.LocateIn(tenant, id)
}

// LocateIn is Lookup for a tenant whose shard id a Lookup in this same map
// gave already: the shard and its node from this snapshot, without asking
// Tenants or the Directory again.
func (m *Map) LocateIn(tenant string, id int) (Location, error) {
	if id < 0 || id >= len(m.Shards) {
		return Location{}, fmt.Errorf("tenant %q: shard %d out of range", tenant, id)
	}
	s := m.Shards[id]
	if s.SchemaPerTenant {
		s.Schema = tenant
		if sc, ok := m.TenantSchemas[tenant]; ok {
			s.Schema = sc
		}
	}
	n, ok := m.Nodes[s.Node]
	if !ok {
		return Location{}, fmt.Errorf("tenant %q: shard %d: node %q missing from map", tenant, id, s.Node)
	}
	return Location{Tenant: tenant, Shard: s, Node: n}, nil
}

// SchemaName is the schema that holds shard id: shard_0000, shard_0001, …
// (five digits past 9999).
func SchemaName(id int) string {
	return fmt.Sprintf("shard_%04d", id)
}

// ValidShardCount reports whether n is a usable shard count: a power of two
// from 1 to 65536.
func ValidShardCount(n int) bool {
	return n >= 1 && n <= 65536 && n&(n-1) == 0
}

// MaxTenantIDBytes is the longest tenant id accepted, in bytes.
const MaxTenantIDBytes = 255

// ValidateTenantID checks a tenant id: 1 to 255 bytes of valid UTF-8 with no NUL.
func ValidateTenantID(id string) error {
	switch {
	case id == "":
		return errors.New("tenant id is empty")
	case len(id) > MaxTenantIDBytes:
		return fmt.Errorf("tenant id is %d bytes; the limit is %d", len(id), MaxTenantIDBytes)
	}
	for i := 0; i < len(id); i++ {
		if id[i] == 0 {
			return errors.New("tenant id contains a NUL byte")
		}
	}
	if !validUTF8(id) {
		return errors.New("tenant id is not valid UTF-8")
	}
	return nil
}
