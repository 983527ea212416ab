package catalog

// upgrades are the catalog's schema versions, applied in order, each in one
// transaction. Never edit a released entry: append a new one.
var upgrades = []string{
	// 1: nodes, shards, tenants, map version, operation log.
	`
CREATE SCHEMA IF NOT EXISTS pgtenant;
CREATE TABLE pgtenant.meta (
	key   text PRIMARY KEY,
	value text NOT NULL
);
CREATE TABLE pgtenant.map_version (
	one     boolean PRIMARY KEY DEFAULT true CHECK (one),
	version bigint  NOT NULL
);
INSERT INTO pgtenant.map_version VALUES (true, 1);
CREATE TABLE pgtenant.nodes (
	name       text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
	dsn        text NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pgtenant.shards (
	id          int PRIMARY KEY CHECK (id >= 0),
	schema_name text NOT NULL UNIQUE,
	node        text NOT NULL REFERENCES pgtenant.nodes (name),
	state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'fenced')),
	epoch       bigint NOT NULL DEFAULT 0,
	created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE pgtenant.tenants (
	id         text PRIMARY KEY CHECK (octet_length(id) BETWEEN 1 AND 255),
	shard      int NOT NULL REFERENCES pgtenant.shards (id),
	explicit   boolean NOT NULL DEFAULT false,
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_shard ON pgtenant.tenants (shard);
CREATE TABLE pgtenant.operations (
	id       bigserial PRIMARY KEY,
	at       timestamptz NOT NULL DEFAULT now(),
	actor    text NOT NULL DEFAULT current_user,
	op       text NOT NULL,
	detail   jsonb NOT NULL DEFAULT '{}',
	ok       boolean NOT NULL,
	error    text
);
`,
	// 2: shard moves and the routers that acknowledge fences.
	`
CREATE TABLE pgtenant.moves (
	id          bigserial PRIMARY KEY,
	shard       int NOT NULL REFERENCES pgtenant.shards (id),
	source_node text NOT NULL,
	target_node text NOT NULL,
	method      text NOT NULL DEFAULT 'logical' CHECK (method IN ('logical', 'copy')),
	step        text NOT NULL,
	status      text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'aborted', 'failed')),
	error       text,
	progress    jsonb NOT NULL DEFAULT '{}',
	pause_ms    double precision,
	started_at  timestamptz NOT NULL DEFAULT now(),
	updated_at  timestamptz NOT NULL DEFAULT now(),
	finished_at timestamptz
);
CREATE UNIQUE INDEX moves_one_running ON pgtenant.moves (shard) WHERE status = 'running';
CREATE TABLE pgtenant.routers (
	id            text PRIMARY KEY,
	addr          text NOT NULL,
	started_at    timestamptz NOT NULL DEFAULT now(),
	last_seen     timestamptz NOT NULL DEFAULT now(),
	acked_version bigint NOT NULL DEFAULT 0
);
`,
	// 3: the map version is bumped by triggers, so every change to nodes,
	// shards or tenants notifies routers, whoever makes it (the CLI, the
	// mover, or an operator's own SQL).
	`
CREATE FUNCTION pgtenant.bump_map_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	v bigint;
BEGIN
	IF EXISTS (SELECT FROM changed) THEN
		UPDATE pgtenant.map_version SET version = version + 1 RETURNING version INTO v;
		PERFORM pg_notify('pgtenant_map', v::text);
	END IF;
	RETURN NULL;
END
$$;
DO $$
DECLARE
	t text;
BEGIN
	FOREACH t IN ARRAY ARRAY['nodes', 'shards', 'tenants'] LOOP
		EXECUTE format('CREATE TRIGGER map_version_ins AFTER INSERT ON pgtenant.%I REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version()', t);
		EXECUTE format('CREATE TRIGGER map_version_upd AFTER UPDATE ON pgtenant.%I REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version()', t);
		EXECUTE format('CREATE TRIGGER map_version_del AFTER DELETE ON pgtenant.%I REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version()', t);
	END LOOP;
END
$$;
`,
	// 4: router users (client authentication), stored as verifiers only.
	`
CREATE TABLE pgtenant.users (
	name       text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 63),
	scram      text NOT NULL CHECK (scram LIKE 'SCRAM-SHA-256$%'),
	md5        text NOT NULL CHECK (md5 ~ '^md5[0-9a-f]{32}$'),
	created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER map_version_ins AFTER INSERT ON pgtenant.users REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
CREATE TRIGGER map_version_upd AFTER UPDATE ON pgtenant.users REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
CREATE TRIGGER map_version_del AFTER DELETE ON pgtenant.users REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
`,
	// 5: fence leases (the mover holding a shard's fence renews its row every
	// second; routers release a fence whose lease lapsed) and node identities
	// (the server's system identifier and the database's oid, so one database
	// cannot be registered twice). Leases live in their own table, without
	// the map-version triggers: a renewal is not a placement change.
	`
CREATE TABLE pgtenant.fence_leases (
	shard      int PRIMARY KEY REFERENCES pgtenant.shards (id),
	move_id    bigint,
	expires_at timestamptz NOT NULL
);
ALTER TABLE pgtenant.nodes ADD COLUMN identity text;
CREATE UNIQUE INDEX nodes_identity ON pgtenant.nodes (identity);
`,
	// 6: where each router serves its HTTP endpoints (for `tenant top`).
	`
ALTER TABLE pgtenant.routers ADD COLUMN admin_url text;
`,
	// 7: extensions installed in the shared schema of every node (pgtenant
	// extension add), so that nodes added later get them too.
	`
CREATE TABLE pgtenant.extensions (
	name       text PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 63),
	schema     text NOT NULL CHECK (octet_length(schema) BETWEEN 1 AND 63),
	added_at   timestamptz NOT NULL DEFAULT now()
);
`,
	// 8: access control: the tables registry (which column holds the tenant
	// id of each app table, for row-level security and tenant purges),
	// roles for granular access, and router users mapped to a role or
	// restricted to one tenant.
	`
CREATE TABLE pgtenant.tables (
	name          text PRIMARY KEY CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
	kind          text NOT NULL CHECK (kind IN ('tenant', 'shared', 'child')),
	tenant_column text CHECK (tenant_column ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
	parent        text REFERENCES pgtenant.tables (name),
	parent_key    text CHECK (parent_key ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
	parent_column text CHECK (parent_column ~ '^[A-Za-z_][A-Za-z0-9_$]{0,62}$'),
	rls           boolean NOT NULL DEFAULT false,
	source        text NOT NULL DEFAULT 'cli',
	updated_at    timestamptz NOT NULL DEFAULT now(),
	CHECK ((kind = 'tenant') = (tenant_column IS NOT NULL)),
	CHECK ((kind = 'child') = (parent IS NOT NULL AND parent_key IS NOT NULL AND parent_column IS NOT NULL)),
	CHECK (NOT rls OR kind <> 'shared')
);
CREATE TABLE pgtenant.roles (
	name       text PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$' AND name NOT LIKE 'pg\_%' AND name NOT LIKE 'pgtenant\_%'),
	privileges text[] NOT NULL CHECK (cardinality(privileges) > 0 AND privileges <@ ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']),
	created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE pgtenant.users
	ADD COLUMN role text REFERENCES pgtenant.roles (name),
	ADD COLUMN tenant text CHECK (octet_length(tenant) BETWEEN 1 AND 255),
	ADD CHECK (role IS NULL OR tenant IS NULL);
`,
	// 9: shard moves by triggers and a change queue (--method trigger), for
	// hosts without logical replication.
	`
ALTER TABLE pgtenant.moves DROP CONSTRAINT moves_method_check,
	ADD CONSTRAINT moves_method_check CHECK (method IN ('logical', 'copy', 'trigger'));
`,
	// 10: a map that scales with changes, not with tenants. Tenants no longer
	// bump the map version (routers do not reload anything when one signs
	// up). Updates and deletes of tenants announce the ids changed on
	// TenantChannel (routers invalidate their lookup caches); inserts
	// announce nothing: a NOTIFY serialises committing transactions through
	// their WAL flush, which would cap signups at one per fsync, and routers
	// keep "unregistered" answers only briefly. Every map version records
	// what it changed in map_changes (the table, and for shards the ids), so
	// a router applies a fence or a flip by reading that shard's row only;
	// the last 10,000 versions are kept. The tenants' foreign key to shards
	// becomes one statement-level check (an anti-join over the rows a
	// statement wrote) instead of a lookup per row, so registering a
	// million tenants at once does not pay a million lookups.
	`
CREATE TABLE pgtenant.map_changes (
	version bigint PRIMARY KEY,
	kind    text NOT NULL,
	shards  int[],
	at      timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION pgtenant.bump_map_version() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	v bigint;
	ids int[];
BEGIN
	IF NOT EXISTS (SELECT FROM changed) THEN
		RETURN NULL;
	END IF;
	UPDATE pgtenant.map_version SET version = version + 1 RETURNING version INTO v;
	IF TG_TABLE_NAME = 'shards' THEN
		IF TG_OP = 'UPDATE' THEN
			SELECT array_agg(DISTINCT id ORDER BY id) INTO ids FROM (SELECT id FROM changed UNION ALL SELECT id FROM changed_old) x;
		ELSE
			SELECT array_agg(DISTINCT id ORDER BY id) INTO ids FROM changed;
		END IF;
	END IF;
	INSERT INTO pgtenant.map_changes (version, kind, shards) VALUES (v, TG_TABLE_NAME, ids);
	DELETE FROM pgtenant.map_changes WHERE version <= v - 10000;
	PERFORM pg_notify('pgtenant_map', v::text);
	RETURN NULL;
END
$$;
DROP TRIGGER map_version_upd ON pgtenant.shards;
CREATE TRIGGER map_version_upd AFTER UPDATE ON pgtenant.shards REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
DROP TRIGGER map_version_ins ON pgtenant.tenants;
DROP TRIGGER map_version_upd ON pgtenant.tenants;
DROP TRIGGER map_version_del ON pgtenant.tenants;
CREATE FUNCTION pgtenant.notify_tenants() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	ids text[];
	n int;
	op text := lower(left(TG_OP, 1));
	payload text;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		PERFORM pg_notify('pgtenant_tenants', '*');
		RETURN NULL;
	END IF;
	IF TG_OP = 'UPDATE' THEN
		SELECT array_agg(id), count(*) INTO ids, n FROM (SELECT id FROM changed UNION SELECT id FROM changed_old LIMIT 65) x;
	ELSE
		SELECT array_agg(id), count(*) INTO ids, n FROM (SELECT id FROM changed LIMIT 65) x;
	END IF;
	IF n = 0 THEN
		RETURN NULL;
	END IF;
	payload := op || array_to_json(ids)::text;
	IF n > 64 OR octet_length(payload) > 7000 THEN
		payload := op; -- too many to name: routers drop what a change of this kind may have made wrong
	END IF;
	PERFORM pg_notify('pgtenant_tenants', payload);
	RETURN NULL;
END
$$;
ALTER TABLE pgtenant.tenants DROP CONSTRAINT tenants_shard_fkey;
CREATE FUNCTION pgtenant.check_tenant_shards() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	bad int;
BEGIN
	IF TG_TABLE_NAME = 'tenants' THEN
		SELECT c.shard INTO bad FROM changed c WHERE NOT EXISTS (SELECT FROM pgtenant.shards s WHERE s.id = c.shard) LIMIT 1;
		IF FOUND THEN
			RAISE foreign_key_violation USING MESSAGE = format('shard %s does not exist', bad),
				HINT = 'Create the shards with pgtenant shard create.';
		END IF;
	ELSE
		SELECT c.id INTO bad FROM changed c WHERE EXISTS (SELECT FROM pgtenant.tenants t WHERE t.shard = c.id) LIMIT 1;
		IF FOUND THEN
			RAISE foreign_key_violation USING MESSAGE = format('shard %s still has tenants', bad);
		END IF;
	END IF;
	RETURN NULL;
END
$$;
CREATE TRIGGER check_shard_ins AFTER INSERT ON pgtenant.tenants REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.check_tenant_shards();
CREATE TRIGGER check_shard_upd AFTER UPDATE ON pgtenant.tenants REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.check_tenant_shards();
CREATE TRIGGER check_tenants_del AFTER DELETE ON pgtenant.shards REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.check_tenant_shards();
CREATE TRIGGER notify_tenants_upd AFTER UPDATE ON pgtenant.tenants REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_tenants();
CREATE TRIGGER notify_tenants_del AFTER DELETE ON pgtenant.tenants REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_tenants();
CREATE TRIGGER notify_tenants_trunc AFTER TRUNCATE ON pgtenant.tenants FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.notify_tenants();
`,
	// 11: imports of an existing database (internal/importer): the legacy
	// node and schema every shard is served from until its cutover, the
	// replication slot and snapshot of the copy, and each shard's copy and
	// cutover progress. import_shards rows change routing, so they bump the
	// map version like shards do.
	`
CREATE TABLE pgtenant.imports (
	one           boolean PRIMARY KEY DEFAULT true CHECK (one),
	legacy_node   text NOT NULL REFERENCES pgtenant.nodes (name),
	legacy_schema text NOT NULL CHECK (octet_length(legacy_schema) BETWEEN 1 AND 63),
	state         text NOT NULL DEFAULT 'serving' CHECK (state IN ('serving', 'copying', 'copied', 'streaming', 'finished')),
	publication   text,
	full_identity text[] NOT NULL DEFAULT '{}',
	slot_name     text,
	start_lsn     pg_lsn,
	started_at    timestamptz NOT NULL DEFAULT now(),
	updated_at    timestamptz NOT NULL DEFAULT now(),
	finished_at   timestamptz
);
CREATE TABLE pgtenant.import_shards (
	shard       int PRIMARY KEY REFERENCES pgtenant.shards (id),
	state       text NOT NULL DEFAULT 'legacy' CHECK (state IN ('legacy', 'copying', 'copied', 'cutover')),
	copy_lsn    pg_lsn,
	tables_done text[] NOT NULL DEFAULT '{}',
	rows        bigint NOT NULL DEFAULT 0,
	bytes       bigint NOT NULL DEFAULT 0,
	pause_ms    double precision,
	updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER map_version_ins AFTER INSERT ON pgtenant.import_shards REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
CREATE TRIGGER map_version_del AFTER DELETE ON pgtenant.import_shards REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
`,
	// 12: node splits through a promoted follower (node split
	// --via-follower, internal/move/follower.go): one row per split with
	// its step, so a split whose process died can be resumed or aborted;
	// at most one running per source node. Its fence leases use the
	// split's id negated as move_id, so they never meet a move's.
	`
CREATE TABLE pgtenant.splits (
	id           bigserial PRIMARY KEY,
	source_node  text NOT NULL REFERENCES pgtenant.nodes (name),
	new_node     text NOT NULL CHECK (new_node ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
	follower_dsn text NOT NULL,
	shards       int[] NOT NULL,
	step         text NOT NULL,
	status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'aborted', 'failed')),
	error        text,
	progress     jsonb NOT NULL DEFAULT '{}',
	pause_ms     double precision,
	started_at   timestamptz NOT NULL DEFAULT now(),
	updated_at   timestamptz NOT NULL DEFAULT now(),
	finished_at  timestamptz
);
CREATE UNIQUE INDEX splits_one_running ON pgtenant.splits (source_node) WHERE status = 'running';
`,
	// 13: tenant moves (internal/tenantops). A tenant_fences row fences
	// one tenant: routers hold its new transactions (placement.Map's
	// FencedTenants) until the row is deleted; inserts and deletes bump the
	// map version (kind 'tenant_fences'), renewals of the lease (an update)
	// do not. tenant_moves records each move's progress, so a move whose
	// process died after the flip can finish deleting the old rows.
	`
CREATE TABLE pgtenant.tenant_fences (
	tenant     text PRIMARY KEY,
	shard      int NOT NULL,
	move_id    bigint,
	expires_at timestamptz NOT NULL
);
CREATE TRIGGER map_version_ins AFTER INSERT ON pgtenant.tenant_fences REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
CREATE TRIGGER map_version_del AFTER DELETE ON pgtenant.tenant_fences REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump_map_version();
CREATE TABLE pgtenant.tenant_moves (
	id           bigserial PRIMARY KEY,
	tenant       text NOT NULL,
	source_shard int NOT NULL,
	target_shard int NOT NULL,
	step         text NOT NULL,
	status       text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'aborted', 'failed')),
	rows         bigint NOT NULL DEFAULT 0,
	pause_ms     double precision,
	error        text,
	started_at   timestamptz NOT NULL DEFAULT now(),
	updated_at   timestamptz NOT NULL DEFAULT now(),
	finished_at  timestamptz
);
CREATE UNIQUE INDEX tenant_moves_one_running ON pgtenant.tenant_moves (tenant) WHERE status = 'running';
`,
	// 14: an import's rollback of a cut-over shard (import rollback): the
	// slot on the shard's node its writes since the cutover are read from,
	// and the node's WAL position at the cutover (where that reverse stream
	// starts).
	`
ALTER TABLE pgtenant.import_shards ADD COLUMN reverse_slot text, ADD COLUMN reverse_lsn pg_lsn;
`,
	// 15: imports from a legacy database without logical replication
	// (import start --method trigger): the import's method, and the legacy
	// snapshot a shard's rows on its node are at after a rollback (the
	// trigger method's copy_lsn: queued changes of transactions visible in
	// it are on the node already).
	`
ALTER TABLE pgtenant.imports ADD COLUMN method text NOT NULL DEFAULT 'logical' CHECK (method IN ('logical', 'trigger'));
ALTER TABLE pgtenant.import_shards ADD COLUMN copy_snapshot pg_snapshot;
`,
	// 16: an import from a legacy database with a schema per tenant (the
	// Rails apartment style, importer/apartment.go): the tenant column the
	// shards' tables gain and its type (set only for that shape; then
	// legacy_schema is the template schema), and each tenant schema's
	// tenant. Routers serve a tenant of a shard not cut over from its own
	// schema (catalog.applyImports reads the rows whose schema is not named
	// like the tenant).
	`
ALTER TABLE pgtenant.imports ADD COLUMN tenant_column text, ADD COLUMN tenant_column_type text;
CREATE TABLE pgtenant.import_schemas (
	one         boolean NOT NULL DEFAULT true REFERENCES pgtenant.imports (one) ON DELETE CASCADE,
	schema_name text PRIMARY KEY CHECK (octet_length(schema_name) BETWEEN 1 AND 63),
	tenant      text NOT NULL UNIQUE
);
`,
	// 17: an import's rejected changes (importer/reject.go): legacy row
	// changes the stream could not route to a shard (no tenant, a tenant
	// not registered), kept with the row until a later change of the row
	// routes it (resolved_lsn) or import finish --accept-rejects drops them
	// on purpose; and the legacy tables left out of the import on purpose.
	`
CREATE TABLE pgtenant.import_rejects (
	id           bigserial PRIMARY KEY,
	one          boolean NOT NULL DEFAULT true REFERENCES pgtenant.imports (one) ON DELETE CASCADE,
	tbl          text NOT NULL,
	row_key      text NOT NULL,
	lsn          pg_lsn NOT NULL,
	tenant       text,
	reason       text NOT NULL,
	row_data     jsonb,
	resolved_lsn pg_lsn,
	resolution   text,
	created_at   timestamptz NOT NULL DEFAULT now(),
	resolved_at  timestamptz,
	UNIQUE (tbl, row_key, lsn)
);
ALTER TABLE pgtenant.imports ADD COLUMN excluded_tables text[] NOT NULL DEFAULT '{}';
`,
}

// LatestVersion is the catalog schema version this build writes.
func LatestVersion() int { return len(upgrades) }
