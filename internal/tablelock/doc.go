// Package tablelock takes locks on a shard's tables for schema changes and
// fences without being starved by autovacuum, and names who holds a lock
// that could not be taken.
//
// A lock request that conflicts with an autovacuum worker's SHARE UPDATE
// EXCLUSIVE gets the worker cancelled by Postgres only once it has waited
// deadlock_timeout (1s); a short lock_timeout, which keeps a DDL from
// stalling the writers queued behind it, never waits that long, and a role
// that is not a superuser may not cancel the worker itself before
// PostgreSQL 18 (pg_signal_autovacuum_worker). So the caller first cancels
// what workers it may (CancelAutovacuum) and takes SHARE UPDATE EXCLUSIVE,
// autovacuum's own lock, which conflicts with no reader or writer, waiting
// past deadlock_timeout (QueueHoldOff); held from then on it keeps
// autovacuum off the tables, and the stronger lock is an upgrade in the
// same transaction that waits only for readers and writers, with the short
// lock_timeout. When a lock cannot be had, Failed names the holders.
//
// Used by internal/move (a shard's fence) and internal/tenantops (a tenant
// move's capture triggers).
package tablelock
