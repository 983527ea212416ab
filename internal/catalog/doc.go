// Package catalog owns pgtenant's catalog database: its schema and in-place
// upgrades, and every query against it. The catalog holds the nodes, the
// shards (one schema each, on one node), the tenants and their shard, the
// control-plane operation log, shard moves and the routers that follow the
// map. Every placement change bumps the map version and sends a NOTIFY on
// channel "pgtenant_map" so routers reload (see Watch).
package catalog
