// Package importer brings an existing single database (the legacy database)
// onto pgtenant while the app keeps running on it.
//
// Init checks the legacy database and the tables registry before anything
// changes, then registers the legacy database as a node that serves every
// shard from its existing schema (pgtenant.imports, pgtenant.import_shards):
// the router routes each tenant to the legacy database, unchanged, until its
// shard is cut over. Baseline writes the legacy tables' definitions as the
// shards' first migration. Start reads each legacy table once at the
// snapshot of a logical replication slot and routes each row to its
// tenant's shard schema on the shard's node (binary COPY), recording the
// tables complete on each node so a killed run resumes; Follow applies the
// change stream; Verify compares both sides at one point of the legacy
// database's history while changes flow.
package importer
