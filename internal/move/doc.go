// Package move moves one shard (a schema) from one Postgres node to another
// while the application keeps writing, with PostgreSQL's native logical
// replication, and pauses only that shard's writes for the cutover.
//
// A move is a state machine whose current step is recorded in the catalog
// table pgtenant.moves before the step creates anything, so an interrupted
// move can always be resumed (Mover.Resume) or rolled back (Mover.Abort).
// The steps of a logical move are:
//
//	start        pre-checks passed, row inserted (at most one running move per shard)
//	schema       schema-only dump restored on the target, without secondary indexes, FKs, triggers
//	publication  marker table and publication on the source
//	subscription subscription (and its slot) created from the target
//	copy         waiting for the initial copy of every table
//	indexes      secondary indexes, FKs and triggers built on the target, ANALYZE
//	catchup      waiting until the replication lag is small
//	fence        routers hold the shard, source tables locked briefly, marker applied, sequences, flip
//	flipped      the catalog points at the target (point of no return; set atomically with the flip)
//	cleanup      subscription, publication and slot dropped; source schema renamed
//	done
//
// Anything that fails before the flip aborts the move: routing stays on the
// source and everything the move created is dropped. Router-side holding of
// the shard's transactions is behind the Fencer interface; the map flip is a
// compare-and-swap UPDATE of pgtenant.shards done by this package in the same
// catalog transaction that records the step "flipped", followed by
// NOTIFY pgtenant_map.
package move
