-- Point select through pgtenant, -M simple: one statement per transaction,
-- the tenant named by the comment hint (pgbench substitutes :tid inside it).
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
/* tenant: :tid */ SELECT balance FROM accounts WHERE id = :tid * :rows_per_tenant + :k;
