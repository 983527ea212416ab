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
// version zero and gets every migration on the next Up.
//
// Up fans out per node: Options.Concurrency workers per node, each holding
// one connection that it points at one shard after another by setting
// search_path to that shard's schema alone (pg_catalog stays implicitly
// visible; objects in public must be schema-qualified). A per-schema
// advisory lock keeps two concurrent runs from migrating the same shard at
// once.
package migrate
