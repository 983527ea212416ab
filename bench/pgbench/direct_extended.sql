-- Point select straight to Postgres (or through pgbouncer), -M extended and
-- -M prepared: the same two statements as router_extended.sql, the first
-- setting the shard's search_path.
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
SELECT set_config('search_path', 'shard_' || lpad((:tid::int % :nshards)::text, 4, '0'), false);
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
