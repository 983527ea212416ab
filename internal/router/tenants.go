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
// there is no map yet), asking the catalog when the map does not know.
func (ss *session) knownTenant(tenant string) *wire.Error {
	m := ss.srv.mp.Load()
	if m == nil || len(m.Shards) == 0 {
		return nil
	}
	_, e := ss.locate(m, tenant)
	return e
}
