package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// AddPromotedNode registers a follower just promoted by a follower split
// (node split --via-follower) as node name. identity is the one the split
// read from the follower after MarkPromoted (empty: read it here, which
// takes a connection); it is checked against the catalog and the registered
// nodes like AddNode does, but without AddNode's other checks, which would
// lengthen the split's pause (`node check` runs them afterwards; the
// database is a copy of a registered node, so it has what that node had).
func (c *Catalog) AddPromotedNode(ctx context.Context, name, dsn, identity string) error {
	err := c.addPromotedNode(ctx, name, dsn, identity)
	c.logOp(ctx, "node add", map[string]any{"node": name, "dsn": RedactDSN(dsn), "promoted_follower": true}, err)
	if err != nil {
		return fmt.Errorf("add node %s: %w", name, err)
	}
	c.logger.Info("node added", "node", name, "promoted_follower", true)
	return nil
}

func (c *Catalog) addPromotedNode(ctx context.Context, name, dsn, id string) error {
	if id == "" {
		resolved, err := c.resolve(dsn)
		if err != nil {
			return err
		}
		conn, err := connectNode(ctx, resolved)
		if err != nil {
			return err
		}
		id, err = NodeIdentity(ctx, conn)
		conn.Close(context.WithoutCancel(ctx))
		if err != nil {
			return err
		}
	}
	if err := c.checkDuplicate(ctx, name, id); err != nil {
		return err
	}
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.nodes (name, dsn, identity) VALUES ($1, $2, $3)`, name, dsn, id)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "nodes_identity":
		var other string
		_ = c.pool.QueryRow(ctx, `SELECT name FROM pgtenant.nodes WHERE identity = $1`, id).Scan(&other)
		return duplicateError(other, id)
	case errors.As(err, &pgErr) && pgErr.Code == "23505":
		return AlreadyRegistered(name)
	case err != nil:
		return fmt.Errorf("register node: %w", err)
	}
	return nil
}
