-- Point select through pgbouncer whose server connections have a fixed
-- search_path (database benchfixed, connect_query SET search_path =
-- shard_0000): what an app without tenants has today, compared with the
-- router choosing a random tenant's shard per transaction. Only tenants of
-- shard 0 (multiples of :nshards) are read, so that every select finds its
-- row. -M simple and -M extended.
\set tid :nshards * random(0, (:ntenants - 1) / :nshards)
\set k random(1, :rows_per_tenant)
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
