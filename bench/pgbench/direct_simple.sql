-- Point select straight to Postgres (or through pgbouncer), -M simple: the
-- shard's search_path set for the transaction in the same round trip, as an
-- app that picks the schema itself would do.
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
SELECT set_config('search_path', 'shard_' || lpad((:tid % :nshards)::text, 4, '0'), true) \; SELECT balance FROM accounts WHERE id = :tid * :rows_per_tenant + :k;
