package catalog

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// keywordDSN rewrites a test URL DSN into the key=value form (another way to
// reach the same database).
func keywordDSN(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", cfg.Host, cfg.Port, cfg.Database, cfg.User)
}

// TestNodeIdentityRefusesDuplicates: one database cannot be registered twice,
// however its DSN is written, nor can the catalog database; nodes registered
// before identities existed get theirs when the next node is added (or at
// node check).
func TestNodeIdentityRefusesDuplicates(t *testing.T) {
	ctx := ctxT(t)
	catDSN := nodeA.NewDatabase(t)
	c := New(catDSN, nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Init(ctx, 4); err != nil {
		t.Fatal(err)
	}
	dsnB := nodeB.NewDatabase(t)
	rep, err := c.AddNode(ctx, "node2", dsnB)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Identity, "system ") {
		t.Errorf("identity %q, want the system identifier and database oid", rep.Identity)
	}
	for _, tc := range []struct{ name, dsn, want string }{
		{"node2dup", dsnB, `same database as node "node2"`},
		{"node2kw", keywordDSN(t, dsnB), `same database as node "node2"`},
		{"catalogdup", catDSN, "catalog database"},
	} {
		_, err := c.AddNode(ctx, tc.name, tc.dsn)
		if !errors.Is(err, ErrDuplicateNode) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add %s: got %v, want ErrDuplicateNode naming %q", tc.name, err, tc.want)
		}
	}
	// Another database on the same server is another node.
	if _, err := c.AddNode(ctx, "node3", nodeB.NewDatabase(t)); err != nil {
		t.Errorf("add another database of the same server: %v", err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil || len(nodes) != 2 {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}

	// A node registered before identities existed (identity NULL) is found too.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.nodes SET identity = NULL`); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddNode(ctx, "node2again", dsnB); !errors.Is(err, ErrDuplicateNode) || !strings.Contains(err.Error(), `"node2"`) {
		t.Errorf("add a duplicate of a node without a recorded identity: %v", err)
	}
	var missing int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pgtenant.nodes WHERE identity IS NULL`).Scan(&missing); err != nil || missing != 0 {
		t.Errorf("%d nodes without identity after the backfill (%v)", missing, err)
	}
	// node check records it as well, and reports a clash.
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.nodes SET identity = NULL WHERE name = 'node3'`); err != nil {
		t.Fatal(err)
	}
	n3, err := c.Node(ctx, "node3")
	if err != nil {
		t.Fatal(err)
	}
	if r := c.CheckRegisteredNode(ctx, n3); r.Failed() || r.Identity == "" {
		t.Errorf("check node3: %+v", r)
	}
	if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.nodes (name, dsn) VALUES ('sneaky', $1)`, dsnB); err != nil {
		t.Fatal(err)
	}
	sneaky, err := c.Node(ctx, "sneaky")
	if err != nil {
		t.Fatal(err)
	}
	if r := c.CheckRegisteredNode(ctx, sneaky); !r.Failed() || !strings.Contains(r.Err().Error(), `same database as node "node2"`) {
		t.Errorf("check of a node registered twice by hand: %+v", r)
	}
}

// TestNodeIdentityWithoutControlFunctions: where pg_control_system() is not
// executable by the node's user, the identity is a marker pgtenant stores in
// the node database, and duplicates are still refused.
func TestNodeIdentityWithoutControlFunctions(t *testing.T) {
	ctx := ctxT(t)
	c := New(nodeA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Init(ctx, 4); err != nil {
		t.Fatal(err)
	}
	dsn := nodeB.NewDatabase(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	db := admin.Config().Database
	// Functions are per database: the revoke touches only this test's database.
	if _, err := admin.Exec(ctx, `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgtenant_nosuper') THEN
			CREATE ROLE pgtenant_nosuper LOGIN; END IF; END $$;
		REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC;
		GRANT CREATE ON DATABASE `+pgx.Identifier{db}.Sanitize()+` TO pgtenant_nosuper`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin.Exec(ctx, `REASSIGN OWNED BY pgtenant_nosuper TO postgres; DROP OWNED BY pgtenant_nosuper`)
	})
	asUser := strings.Replace(dsn, "postgres://postgres@", "postgres://pgtenant_nosuper@", 1)
	rep, err := c.AddNode(ctx, "m1", asUser)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Identity, "marker ") {
		t.Errorf("identity %q, want a marker", rep.Identity)
	}
	if _, err := c.AddNode(ctx, "m2", asUser); !errors.Is(err, ErrDuplicateNode) || !strings.Contains(err.Error(), `"m1"`) {
		t.Errorf("add the same database again: %v, want ErrDuplicateNode naming m1", err)
	}
}
