// Package routeradmin is the client side of the routers' admin API: it asks
// routers for their per-tenant usage (/admin/tenants) and merges the answers,
// as `pgtenant tenant top` and the web console show them. The routers are
// found by the caller (catalog.RouterAdminURLs) or named by hand.
package routeradmin
