// Package access owns who may do what on the shards: the runtime role the
// router runs transactions as (so that row-level security applies to them),
// the granular roles of `pgtenant role create`, the per-shard roles of
// restricted users, and the row-level security policies computed from the
// tables registry (package tables). A Plan is computed once from the
// catalog and applied, idempotently, to every shard schema of every node:
// after shard create, migrate up, a shard move, or on demand with
// `pgtenant access apply`.
package access
