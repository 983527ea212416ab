// Package importer brings an existing single database (the legacy database)
// onto pgtenant while the app keeps running on it.
//
// Init checks the legacy database and the tables registry before anything
// changes, then registers the legacy database as a node that serves every
// shard from its existing schema (pgtenant.imports, pgtenant.import_shards):
// the router routes each tenant to the legacy database, unchanged, until its
// shard is cut over. Baseline writes the legacy tables' definitions as the
// shards' first migration. Start copies each tenant's rows into its shard
// schema on the shard's node at the snapshot of a logical replication slot,
// shard by shard, recording what is done so a killed run resumes.
package importer
