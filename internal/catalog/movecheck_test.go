package catalog

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestNodeCheckMovePrivileges: a node check tries what a move does as the
// node's role (a publication, a replication connection, a logical slot) and
// says what is missing, with the SQL to fix it; it leaves nothing behind.
func TestNodeCheckMovePrivileges(t *testing.T) {
	ctx := ctxT(t)
	dsn := nodeA.NewDatabase(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	db := admin.Config().Database
	const role = "pgtenant_check_node"
	if _, err := admin.Exec(ctx, `DROP ROLE IF EXISTS `+role+`; CREATE ROLE `+role+` LOGIN NOREPLICATION; ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO `+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO postgres`) })
	asRole := strings.Replace(dsn, "postgres://postgres@", "postgres://"+role+"@", 1)

	check := func(want map[string]string) {
		t.Helper()
		r := CheckNode(ctx, "n", asRole)
		got := map[string]CheckResult{}
		for _, c := range r.Checks {
			got[c.Name] = c
		}
		for name, status := range want {
			if got[name].Status != status {
				t.Errorf("check %q: %+v, want %s", name, got[name], status)
			}
		}
		if r.Failed() {
			t.Errorf("node check failed: %v", r.Err())
		}
		var left int
		if err := admin.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant_check%')
			+ (SELECT count(*) FROM pg_publication) + (SELECT count(*) FROM pg_replication_slots)`).Scan(&left); err != nil || left != 0 {
			t.Errorf("the check left %d schemas, publications or slots (%v)", left, err)
		}
		if t.Failed() {
			t.Logf("checks: %+v", r.Checks)
		}
	}
	// Without REPLICATION: publications work (the role owns what it creates), slots do not.
	check(map[string]string{"move publication": CheckOK, "move slot": CheckWarn, "replication": CheckWarn})
	r := CheckNode(ctx, "n", asRole)
	for _, c := range r.Checks {
		if c.Name == "move slot" && !strings.Contains(c.Detail, `ALTER ROLE "`+role+`" REPLICATION`) {
			t.Errorf("move slot: %q, want the ALTER ROLE to fix it", c.Detail)
		}
	}
	// With REPLICATION (and no superuser) everything a move needs works.
	if _, err := admin.Exec(ctx, `ALTER ROLE `+role+` REPLICATION`); err != nil {
		t.Fatal(err)
	}
	check(map[string]string{"move publication": CheckOK, "move slot": CheckOK})
	// On a server with wal_level=replica the slot is not tried.
	r = CheckNode(ctx, "r", replicaOnly.Cluster.DSN("postgres"))
	for _, c := range r.Checks {
		if c.Name == "move slot" && (c.Status != CheckWarn || !strings.Contains(c.Detail, "wal_level")) {
			t.Errorf("move slot on wal_level=replica: %+v", c)
		}
	}
}
