// Package tables owns the tables registry: for each table of the
// application (the same in every shard schema), the column that holds the
// tenant id, or "shared" for reference tables whose rows belong to no
// tenant, or, for a child table without a tenant column, the parent table it
// reaches its tenant through (a join path). The registry lives in the
// catalog (pgtenant.tables); rules come from migration files (annotations,
// see ParseAnnotations) or from `pgtenant table set`. Row-level security
// (package access) and tenant purges read it.
package tables
