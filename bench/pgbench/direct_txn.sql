-- Point select straight to Postgres or through pgbouncer, -M extended and
-- -M prepared, as four statements in one transaction: the shard's
-- search_path set with SET LOCAL semantics, so it is safe through pgbouncer in
-- transaction mode (a session-level search_path would leak to other clients'
-- transactions there).
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
BEGIN;
SELECT set_config('search_path', 'shard_' || lpad((:tid::int % :nshards)::text, 4, '0'), true);
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
END;
