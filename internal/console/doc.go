// Package console is pgtenant's web console: an http.Handler serving
// read-only, server-rendered pages over the catalog and the routers' admin
// API. The overview draws the shard map (a grid of shards coloured by node,
// shaded by bytes, fenced and moving shards marked), the nodes, the moves
// with their progress and the routers with the map version each applied; it
// refreshes its live part every second with a small embedded script (or a
// meta refresh without scripts). Other pages show the busiest tenants
// (merged over every router, see package routeradmin), where the shards
// stand against the migrations, and the operation log.
//
// Templates, the stylesheet and the script are embedded (Go embed): no build
// step, nothing fetched from the network. Sizes, tenant counts and the
// reachability of nodes are read from the nodes and the catalog at most once
// per Config.SizeTTL. The console never writes: it answers GET and HEAD
// only. Who may read it is the caller's concern (see BasicAuth and the
// `pgtenant console` command, which binds to loopback by default).
package console
