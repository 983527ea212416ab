package catalog

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestNodeIdentityPromotedFollower: a promoted standby has its primary's
// system identifier and database oid. Promoted by hand it is refused as a
// duplicate of the registered primary (with the hint of node split
// --via-follower); marked by MarkPromoted (what the split does) it is
// accepted, by AddNode and AddPromotedNode alike, and a second
// registration of either database is still refused.
func TestNodeIdentityPromotedFollower(t *testing.T) {
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
	if _, err := c.AddNode(ctx, "primary", dsn); err != nil {
		t.Fatal(err)
	}
	var db string
	func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		db = conn.Config().Database
	}()
	standby := nodeB.NewStandby(t)
	fdsn := standby.DSN(db)
	f, err := pgx.Connect(ctx, fdsn)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close(ctx)
	ro, err := ReadNodeIdentity(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	if err := f.QueryRow(ctx, `SELECT pg_promote(true, 60)`).Scan(&ok); err != nil || !ok {
		t.Fatalf("promote: %v %v", ok, err)
	}
	if _, err := c.AddNode(ctx, "byhand", fdsn); !errors.Is(err, ErrDuplicateNode) || !strings.Contains(err.Error(), "--via-follower") {
		t.Errorf("add a follower promoted by hand: %v, want ErrDuplicateNode with the hint", err)
	}
	if err := MarkPromoted(ctx, f, "7f1c2b9e-3a4d-4e5f-8a6b-1c2d3e4f5a6b"); err != nil {
		t.Fatal(err)
	}
	if err := MarkPromoted(ctx, f, "7f1c2b9e-3a4d-4e5f-8a6b-1c2d3e4f5a6b"); err != nil {
		t.Fatalf("mark again: %v", err)
	}
	rep, err := c.AddNode(ctx, "follower", fdsn)
	if err != nil {
		t.Fatalf("add the promoted follower: %v", err)
	}
	if want := ro + " promoted 7f1c2b9e-3a4d-4e5f-8a6b-1c2d3e4f5a6b"; rep.Identity != want {
		t.Errorf("identity %q, want %q", rep.Identity, want)
	}
	for name, d := range map[string]string{"follower2": fdsn, "primary2": dsn} {
		if _, err := c.AddNode(ctx, name, d); !errors.Is(err, ErrDuplicateNode) {
			t.Errorf("add %s: %v, want ErrDuplicateNode", name, err)
		}
		if err := c.AddPromotedNode(ctx, name, d, ""); !errors.Is(err, ErrDuplicateNode) {
			t.Errorf("add promoted %s: %v, want ErrDuplicateNode", name, err)
		}
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.nodes WHERE name = 'follower'`); err != nil {
		t.Fatal(err)
	}
	if err := c.AddPromotedNode(ctx, "follower", fdsn, rep.Identity); err != nil {
		t.Errorf("AddPromotedNode: %v", err)
	}
}
