// Package shared owns the shared schema of every node (public by default):
// the extensions installed there and the reference tables (plans,
// countries, tariffs: the same rows for every tenant) that live there,
// written only through this package and fanned out to every node.
//
// A shard's search_path puts the shared schema after the shard's own, so
// every tenant's transactions can read reference tables, join them with
// their own, and use the extensions' types and functions. Postgres refuses
// writes to a reference table from anywhere else: a statement trigger raises
// 42501 unless the transaction set pgtenant.reference_write, which this
// package does and the router never lets a client SET.
package shared
