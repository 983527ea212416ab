-- Point select through pgtenant, -M extended and -M prepared: pgbench turns
-- :tid into a bind parameter, and a comment hint cannot carry a parameter, so
-- the tenant is chosen for the session with set_config and a bind parameter,
-- then the point select runs: two statements, two round trips.
-- (BEGIN; set_config(..., true); SELECT; END would be the natural script, but
-- the router refuses BEGIN over the extended protocol when no tenant is set
-- yet: see bench/README.md.)
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
SELECT set_config('pgtenant.tenant', :tid, false);
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
