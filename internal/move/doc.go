// Package move moves one shard (a schema) from one Postgres node to another
// while the application keeps writing, with PostgreSQL's logical decoding
// (the mover streams and applies the changes itself, see logical.go and
// package stream, so a node role needs REPLICATION and table ownership, not
// SUPERUSER), and pauses only that shard's writes for the cutover.
//
// A move is a state machine whose current step is recorded in the catalog
// table pgtenant.moves before the step creates anything, so an interrupted
// move can always be resumed (Mover.Resume) or rolled back (Mover.Abort).
// The steps of a logical move are:
//
//	start        pre-checks passed, row inserted (at most one running move per shard)
//	schema       schema-only dump restored on the target, without secondary indexes, FKs, triggers
//	publication  marker table and publication on the source (FOR TABLE each table)
//	subscription logical slot created with an exported snapshot (step name kept from CREATE SUBSCRIPTION days)
//	copy         every table copied at the slot's snapshot; the slot's start recorded on the target
//	indexes      secondary indexes, FKs and triggers built on the target, ANALYZE
//	catchup      the mover streams changes to the target until the lag is small
//	fence        routers hold the shard, source tables locked briefly, marker applied, sequences, flip
//	flipped      the catalog points at the target (point of no return; set atomically with the flip)
//	verify       the target's snapshot at the flip compared with the frozen source;
//	             a difference undoes the flip (verifyafter.go, undo.go)
//	cleanup      stream stopped; publication, slot and stream position dropped; source schema renamed
//	done
//
// For --method copy the steps are start, schema, copydata (fence, COPY every
// table, indexes, sequences, flip), flipped, cleanup, done.
//
// For --method trigger (no logical replication) they are start, schema,
// capture (change queue and triggers on the source), copy (at one snapshot),
// indexes, catchup (the queue applied in rounds), fence (drained by a last
// round instead of a marker), flipped, cleanup, done: see trigger.go.
//
// A node split through a promoted follower (SplitViaFollower, follower*.go)
// copies no row: it fences half of a node's shards with the same fence and
// leases, waits for a physical standby to replay past it, promotes it,
// registers it and flips that half to it in one catalog transaction; its
// steps (start, fence, promote, promoted, flipped, cleanup, done) are
// recorded in pgtenant.splits. See the comment at the top of follower.go.
//
// Choices worth knowing:
//   - Catch-up is proven with a marker row, not by comparing WAL positions: a
//     row committed on the source into pgtenant_move.marker (published with a
//     row filter on the move id) is polled for on the target; the mover
//     applies in commit order, so once it is visible everything committed
//     before it is too. Markers commit with synchronous_commit on.
//   - The fence is a lease (Config.FenceLease, 5s by default) renewed every
//     second in the catalog (pgtenant.fence_leases) and on the source node
//     (pgtenant_move.fence); when the mover dies, routers release the shard
//     to its source and the move waits for Resume (see lease.go).
//   - Under the fence one source transaction takes LOCK TABLE … IN EXCLUSIVE
//     MODE (lock_timeout bounded; it began before the pause with SHARE UPDATE
//     EXCLUSIVE, waiting out autovacuum: fencelock.go), puts the pgtenant_fence statement trigger
//     on every table, takes the source lease and inserts the marker. A writer
//     that slipped past the routers then fails with 25006 (superusers too)
//     until the lease lapses; after the flip the lease is permanent and the
//     retired schema has its write privileges revoked (42501).
//   - The flip is done here, not behind an interface: UPDATE pgtenant.shards
//     SET node = target, epoch = epoch + 1, state = 'active' WHERE id = shard
//     AND node = source AND state = 'fenced' and a live fence lease of the
//     move (consumed) and the move's step set to 'flipped', in one catalog
//     statement (one round trip); the shards table's trigger bumps the map
//     version and sends the one NOTIFY pgtenant_map the routers reload on.
//     Fencing sets state = 'fenced' (notified the same way) before calling
//     Fencer.Fence; an abort sets it back to 'active'.
//   - The old schema is renamed <schema>_moved_<move id> on the source;
//     Mover.Cleanup drops those of finished moves (Options.DropSource drops it
//     at once).
//
// Anything that fails before the flip aborts the move: routing stays on the
// source and everything the move created is dropped. Router-side holding of
// the shard's transactions is behind the Fencer interface; the map flip is a
// compare-and-swap UPDATE of pgtenant.shards done by this package in the same
// catalog transaction that records the step "flipped", whose map-version
// trigger sends NOTIFY pgtenant_map.
package move
