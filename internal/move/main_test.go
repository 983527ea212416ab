package move

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// srvA holds the catalog and the source node's database; srvB the target's.
var srvA, srvB *pgtest.Server

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) {
		srvA, srvB = s[0], s[1]
		for _, srv := range s {
			createAppRole(srv)
		}
	})
}

// appRole is a non-superuser role the shard's tables are granted to (roles are
// per server, so it exists on every node, as the pre-checks require).
const appRole = "pgtenant_app"

func createAppRole(srv *pgtest.Server) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
	if err != nil {
		panic(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE ROLE `+appRole+` LOGIN; CREATE ROLE `+nodeRole+` LOGIN REPLICATION`); err != nil {
		panic(err)
	}
}

// nodeRole is the least-privileged role a node can be registered with: no
// SUPERUSER, owner of the node's database (and so of the shard schemas it
// creates), with REPLICATION.
const nodeRole = "pgtenant_node"

// newEnvNodeRole is newEnv with the nodes registered as nodeRole, which owns
// both node databases and creates the shard (fillShard). The test's own
// pools (e.src, e.dst) stay superuser, for assertions.
func newEnvNodeRole(t *testing.T) *env {
	t.Helper()
	e := &env{catDSN: srvA.NewDatabase(t), srcDSN: srvA.NewDatabase(t), dstDSN: srvB.NewDatabase(t)}
	e.cat, e.src, e.dst = pool(t, e.catDSN), pool(t, e.srcDSN), pool(t, e.dstDSN)
	for _, p := range []*pgxpool.Pool{e.src, e.dst} {
		var db string
		if err := p.QueryRow(context.Background(), `SELECT current_database()`).Scan(&db); err != nil {
			t.Fatal(err)
		}
		mustExec(t, p, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO `+nodeRole)
	}
	e.owner = pool(t, asNode(e.srcDSN))
	mustExec(t, e.cat, catalogDDL)
	mustExec(t, e.cat, `INSERT INTO pgtenant.nodes VALUES ('n1', $1), ('n2', $2)`, asNode(e.srcDSN), asNode(e.dstDSN))
	mustExec(t, e.cat, `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, 'n1'), (6, 'shard_0006', 'n1')`, testShard, testSchema)
	return e
}

// asNode returns dsn with the node role instead of the superuser.
func asNode(dsn string) string { return asRole(dsn, nodeRole) }

// asRole returns dsn with role instead of the superuser.
func asRole(dsn, role string) string {
	return strings.Replace(dsn, "postgres://postgres@", "postgres://"+role+"@", 1)
}

// asApp returns dsn with the application role instead of the superuser.
func asApp(dsn string) string {
	return strings.Replace(dsn, "postgres://postgres@", "postgres://"+appRole+"@", 1)
}

// catalogDDL is the part of the catalog this package relies on.
const catalogDDL = `
CREATE SCHEMA pgtenant;
CREATE TABLE pgtenant.nodes (name text PRIMARY KEY, dsn text NOT NULL);
CREATE TABLE pgtenant.shards (id int PRIMARY KEY, schema_name text NOT NULL, node text NOT NULL REFERENCES pgtenant.nodes,
  state text NOT NULL DEFAULT 'active', epoch bigint NOT NULL DEFAULT 0);
CREATE TABLE pgtenant.moves (id bigserial PRIMARY KEY, shard int NOT NULL, source_node text NOT NULL, target_node text NOT NULL,
  method text NOT NULL DEFAULT 'logical', step text NOT NULL, status text NOT NULL DEFAULT 'running',
  error text, progress jsonb NOT NULL DEFAULT '{}', pause_ms double precision, started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
CREATE UNIQUE INDEX moves_one_running ON pgtenant.moves (shard) WHERE status = 'running';
CREATE TABLE pgtenant.fence_leases (shard int PRIMARY KEY REFERENCES pgtenant.shards (id), move_id bigint, expires_at timestamptz NOT NULL);
`

const testShard = 5
const testSchema = "shard_0005"

// env is one test's catalog plus two node databases, "n1" (source, on srvA) and "n2" (target, on srvB).
type env struct {
	cat, src, dst          *pgxpool.Pool
	catDSN, srcDSN, dstDSN string
	// owner, when set, is the source as the node role (see newEnvNodeRole): the shard is created through it.
	owner *pgxpool.Pool
}

func newEnv(t *testing.T) *env { return newEnvNodes(t, srvA, srvB) }

// newEnvTarget is newEnv with the target node's database on server target.
func newEnvTarget(t *testing.T, target *pgtest.Server) *env { return newEnvNodes(t, srvA, target) }

// newEnvNodes is newEnv with the node databases on the given servers (the catalog stays on srvA).
func newEnvNodes(t *testing.T, source, target *pgtest.Server) *env {
	t.Helper()
	e := &env{catDSN: srvA.NewDatabase(t), srcDSN: source.NewDatabase(t), dstDSN: target.NewDatabase(t)}
	e.cat, e.src, e.dst = pool(t, e.catDSN), pool(t, e.srcDSN), pool(t, e.dstDSN)
	mustExec(t, e.cat, catalogDDL)
	mustExec(t, e.cat, `INSERT INTO pgtenant.nodes VALUES ('n1', $1), ('n2', $2)`, e.srcDSN, e.dstDSN)
	mustExec(t, e.cat, `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, 'n1'), (6, 'shard_0006', 'n1')`, testShard, testSchema)
	return e
}

func pool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func mustExec(t *testing.T, p *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := p.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, p *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := p.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// shardDDL builds a shard with an identity PK, a bigserial PK, a free
// sequence, a secondary index, an FK, a view, a function and a trigger.
const shardDDL = `
CREATE SCHEMA shard_0005;
CREATE TABLE shard_0005.accounts (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant text NOT NULL, name text);
CREATE TABLE shard_0005.items (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES shard_0005.accounts (id),
  writer int NOT NULL DEFAULT 0, n int NOT NULL, val int NOT NULL DEFAULT 0, payload text, UNIQUE (writer, n));
CREATE INDEX items_account ON shard_0005.items (account_id);
CREATE TABLE shard_0005.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL);
CREATE SEQUENCE shard_0005.invoice_no;
CREATE VIEW shard_0005.account_items AS SELECT account_id, count(*) AS n FROM shard_0005.items GROUP BY account_id;
CREATE FUNCTION shard_0005.fill_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.payload := coalesce(NEW.payload, 'p' || NEW.n); RETURN NEW; END $$;
CREATE TRIGGER items_fill BEFORE INSERT ON shard_0005.items FOR EACH ROW EXECUTE FUNCTION shard_0005.fill_payload();
GRANT USAGE ON SCHEMA shard_0005 TO pgtenant_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA shard_0005 TO pgtenant_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA shard_0005 TO pgtenant_app;
CREATE SCHEMA shard_0006;
CREATE TABLE shard_0006.t (id int PRIMARY KEY);
`

// fillShard creates the shard schema on the source with rows items.
func fillShard(t *testing.T, e *env, rows int) {
	t.Helper()
	p := e.src
	if e.owner != nil {
		p = e.owner
	}
	mustExec(t, p, shardDDL)
	mustExec(t, p, `INSERT INTO shard_0005.accounts (tenant, name) SELECT 't' || i, 'acct ' || i FROM generate_series(1, 100) i`)
	mustExec(t, p, `INSERT INTO shard_0005.items (account_id, writer, n) SELECT 1 + i % 100, 0, i FROM generate_series(1, $1::int) i`, rows)
	mustExec(t, p, `INSERT INTO shard_0005.events (kind) SELECT 'seed' FROM generate_series(1, 100)`)
	mustExec(t, p, `SELECT setval('shard_0005.invoice_no', 42)`)
}

func testMover(t *testing.T, e *env, cfg Config) *Mover {
	cfg.Catalog = e.cat
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	if cfg.CatchUpTimeout == 0 {
		cfg.CatchUpTimeout = 2 * time.Minute
	}
	if cfg.FenceTimeout == 0 {
		cfg.FenceTimeout = 10 * time.Second
	}
	return New(cfg)
}

// assertNoLeftovers checks that no publication, slot, subscription or stream position of any
// move is left in the test's databases (slots and subscriptions are listed
// cluster-wide).
func assertNoLeftovers(t *testing.T, e *env) {
	t.Helper()
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_publication`); n != 0 {
		t.Errorf("%d publications left on source", n)
	}
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`); n != 0 {
		t.Errorf("%d replication slots left on source", n)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
		t.Errorf("%d subscriptions left on target", n)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_class WHERE oid = to_regclass('pgtenant_stream.position')`); n != 0 {
		if n := queryInt(t, e.dst, `SELECT count(*) FROM pgtenant_stream.position`); n != 0 {
			t.Errorf("%d stream positions left on target", n)
		}
	}
}

type shardRow struct {
	node, state string
	epoch       int64
}

func shardState(t *testing.T, e *env) shardRow {
	t.Helper()
	var r shardRow
	if err := e.cat.QueryRow(context.Background(), `SELECT node, state, epoch FROM pgtenant.shards WHERE id = $1`, testShard).Scan(&r.node, &r.state, &r.epoch); err != nil {
		t.Fatal(err)
	}
	return r
}

func schemaOn(t *testing.T, p *pgxpool.Pool, schema string) bool {
	t.Helper()
	return queryInt(t, p, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema) == 1
}

func moveInfo(t *testing.T, m *Mover, id int64) Info {
	t.Helper()
	in, err := m.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// appInsert inserts a row into the shard's items table as the application role.
func appInsert(ctx context.Context, dsn, schema string, n int) error {
	conn, err := pgx.Connect(ctx, asApp(dsn))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (account_id, writer, n) VALUES (1, 77, $1)`, pgx.Identifier{schema, "items"}.Sanitize()), n)
	return err
}
