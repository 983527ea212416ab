-- Point select straight to Postgres, -M extended and -M prepared: the same
-- two statements as router_extended.sql, the first setting the shard's
-- search_path for the session. Correct only on a direct connection (or
-- pgbouncer in session mode); through pgbouncer in transaction mode use
-- direct_txn.sql.
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
SELECT set_config('search_path', 'shard_' || lpad((:tid::int % :nshards)::text, 4, '0'), false);
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
