// Package migrate applies versioned SQL migrations to every shard schema and
// reports which shards are behind.
//
// Migration files use goose's SQL format (00001_name.sql with "-- +goose Up"
// and "-- +goose Down" sections); a .sql file without any goose annotation is
// taken whole as its Up section, sent as one statement batch. Underneath,
// github.com/pressly/goose/v3 runs the files: each file in its own
// transaction together with its version row, so a shard is always at a whole
// version. A file marked "-- +goose NO TRANSACTION" (say, for CREATE INDEX
// CONCURRENTLY) gives that guarantee up: a failure or kill inside it can
// leave part of it applied without its version row.
//
// State lives in each shard: a goose_db_version table inside the shard's
// schema. It moves with the shard, and a shard created later simply starts at
// version zero and gets every migration on the next Up. Beside goose's
// columns it records, per applied version, the file's name and the SHA-256
// of its bytes, in the same INSERT (so the same transaction) as the version
// row. Up, Down and Status compare them with the directory before anything
// runs (see DriftError); tables from before these columns get them, and the
// current files' checksums, on the next Up or Down.
//
// Down runs the files' "-- +goose Down" sections, newest first: one step
// (the highest version applied on any shard) or down to a version. Create
// writes a new file with a UTC timestamp version.
//
// Up fans out per node: Options.Concurrency workers per node, each holding
// one connection that it points at one shard after another by setting
// search_path to that shard's schema alone (pg_catalog stays implicitly
// visible; objects in public must be schema-qualified). A per-schema
// advisory lock keeps two concurrent runs from migrating the same shard at
// once.
package migrate
