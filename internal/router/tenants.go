package router

import (
	"errors"
	"fmt"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// locate finds where tenant lives in m: from the map's own tenants, or by
// asking its Directory (the catalog, through a bounded cache: see
// catalog.LoadMap). The error is ready for the client: 42704 for a tenant
// that is not registered, 08006 when the catalog could not be asked.
func (ss *session) locate(m *placement.Map, tenant string) (placement.Location, *wire.Error) {
	loc, err := m.Lookup(ss.ctx, tenant)
	switch {
	case err == nil:
		return loc, nil
	case errors.Is(err, placement.ErrUnknownTenant):
		return loc, unknownTenantError(tenant)
	case errors.Is(err, placement.ErrDirectoryUnavailable), ss.ctx.Err() != nil:
		ss.srv.log.Warn("tenant lookup failed", "session", ss.id, "tenant", tenant, "err", err)
		return loc, &wire.Error{Code: "08006", Message: fmt.Sprintf("cannot tell whether tenant %q is registered: the catalog did not answer", tenant),
			Hint: "Retry in a moment. While the catalog is away the router serves the tenants it has already looked up."}
	}
	return loc, &wire.Error{Code: "XX000", Message: err.Error()}
}

// knownTenant reports whether tenant is registered in the map in use (or
// there is no map yet), asking the catalog when the map does not know; it
// returns the map and the tenant's shard in it (nil: no map to ask).
func (ss *session) knownTenant(tenant string) (*placement.Map, int, *wire.Error) {
	m := ss.srv.mp.Load()
	if m == nil || len(m.Shards) == 0 {
		return nil, 0, nil
	}
	loc, e := ss.locate(m, tenant)
	return m, loc.Shard.ID, e
}

// locateTxn is locate for the checkout of a transaction: a tenant chosen
// by SET LOCAL (or set_config(…, true)) was looked up in m already by
// setTenant, so its shard is taken from there (one lookup per transaction,
// not two). Only localTenant's: it lasts one transaction, within which a
// tenant changes shard only through a fence, which publishes a new map. The
// memo is used once, so an idle session keeps an old map alive only after a
// SET LOCAL that no statement followed (until its next one).
func (ss *session) locateTxn(m *placement.Map, tenant string) (placement.Location, *wire.Error) {
	if lm := ss.localMap; lm != nil {
		ss.localMap = nil
		if m != lm || tenant != ss.localTenant {
			return ss.locate(m, tenant)
		}
		if loc, err := m.LocateIn(tenant, int(ss.localShard)); err == nil {
			return loc, nil
		}
	}
	return ss.locate(m, tenant)
}
