package access

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// Apply loads the plan from the catalog and applies it to every node: the
// roles everywhere, grants and policies on each node's shard schemas (only
// the shards for which only returns true, when only is not nil). resolve
// turns a stored node DSN into the one to connect with (its secret
// references, $NAME, resolved: catalog.ResolveDSN); nil connects with the
// DSN as stored.
func Apply(ctx context.Context, db *pgxpool.Pool, resolve func(dsn string) (string, error), only func(shard int) bool) ([]NodeReport, error) {
	return ApplyRuntimeRole(ctx, db, resolve, only, "")
}

// ApplyRuntimeRole is Apply with runtimeRole as the runtime role instead of
// the recorded one (when not ""): `rls enable` creates a new runtime role on
// every node before it records it, so that routers never switch to a role a
// node lacks.
func ApplyRuntimeRole(ctx context.Context, db *pgxpool.Pool, resolve func(dsn string) (string, error), only func(shard int) bool, runtimeRole string) ([]NodeReport, error) {
	p, err := Load(ctx, db)
	if err != nil {
		return nil, err
	}
	if runtimeRole != "" {
		p.RuntimeRole = runtimeRole
	}
	nodes, byNode, err := layout(ctx, db)
	if err != nil {
		return nil, err
	}
	var reps []NodeReport
	for _, n := range nodes {
		if resolve != nil {
			if n.DSN, err = resolve(n.DSN); err != nil {
				return reps, fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		var shards []placement.Shard
		for _, s := range byNode[n.Name] {
			if only == nil || only(s.ID) {
				shards = append(shards, s)
			}
		}
		var rep NodeReport
		err := onNode(ctx, n, func(conn *pgx.Conn) error {
			var err error
			rep, err = p.ApplyNode(ctx, conn, n.Name, shards)
			return err
		})
		if err != nil {
			return reps, fmt.Errorf("node %s: %w", n.Name, err)
		}
		reps = append(reps, rep)
	}
	return reps, nil
}

// ApplyShard applies the plan to one shard schema on one node, which need
// not be the shard's node in the catalog yet (a move's target). With
// rolesOnly, it only creates the roles, which must exist before a schema
// that grants to them is restored there.
func ApplyShard(ctx context.Context, db *pgxpool.Pool, node placement.Node, shard placement.Shard, rolesOnly bool) error {
	p, err := Load(ctx, db)
	if err != nil {
		return err
	}
	return onNode(ctx, node, func(conn *pgx.Conn) error {
		if rolesOnly {
			return p.EnsureRoles(ctx, conn, []placement.Shard{shard})
		}
		_, err := p.ApplyNode(ctx, conn, node.Name, []placement.Shard{shard})
		return err
	})
}

// layout reads the nodes and their shards from the catalog.
func layout(ctx context.Context, db *pgxpool.Pool) ([]placement.Node, map[string][]placement.Shard, error) {
	rows, err := db.Query(ctx, `SELECT name, dsn FROM pgtenant.nodes ORDER BY name`)
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	nodes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (placement.Node, error) {
		var n placement.Node
		err := r.Scan(&n.Name, &n.DSN)
		return n, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list nodes: %w", err)
	}
	legacy, err := catalog.LegacyNodes(ctx, db)
	if err != nil {
		return nil, nil, err
	}
	kept := nodes[:0]
	for _, n := range nodes {
		if !legacy[n.Name] {
			kept = append(kept, n)
		}
	}
	nodes = kept
	rows, err = db.Query(ctx, `SELECT id, schema_name, node FROM pgtenant.shards ORDER BY id`)
	if err != nil {
		return nil, nil, fmt.Errorf("list shards: %w", err)
	}
	byNode := map[string][]placement.Shard{}
	var s placement.Shard
	_, err = pgx.ForEachRow(rows, []any{&s.ID, &s.Schema, &s.Node}, func() error {
		byNode[s.Node] = append(byNode[s.Node], s)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list shards: %w", err)
	}
	return nodes, byNode, nil
}

// PrepareNode creates the plan's roles (not the restricted ones) on a node
// just added, so that shards moved there restore their grants.
func PrepareNode(ctx context.Context, db *pgxpool.Pool, node placement.Node) error {
	p, err := Load(ctx, db)
	if err != nil {
		return err
	}
	if p.RuntimeRole == "" && len(p.Roles) == 0 {
		return nil
	}
	return onNode(ctx, node, func(conn *pgx.Conn) error { return p.EnsureRoles(ctx, conn, nil) })
}
