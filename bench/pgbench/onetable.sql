-- Point select through pgbouncer to one database whose accounts table holds
-- every tenant's rows (database benchone, connect_query SET search_path =
-- public): what the app has today before sharding, any tenant read, no
-- per-transaction setting. -M simple and -M extended.
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
