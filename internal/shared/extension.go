package shared

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Extension is one extension installed on a node.
type Extension struct {
	Name, Version, Schema string
}

// AddExtension installs extension name in schema (DefaultSchema when empty)
// on every node: CREATE SCHEMA IF NOT EXISTS, CREATE EXTENSION IF NOT
// EXISTS. It is idempotent; an extension already installed in another
// schema is an error for that node, as is one the server does not have.
func AddExtension(ctx context.Context, nodes []Node, name, schema string) error {
	schema = schemaOr(schema)
	return fanOut(ctx, nodes, func(ctx context.Context, c *pgx.Conn, n Node) error {
		return addExtension(ctx, c, name, schema)
	})
}

func addExtension(ctx context.Context, c *pgx.Conn, name, schema string) error {
	var have string
	err := c.QueryRow(ctx, `SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
		WHERE e.extname = $1`, name).Scan(&have)
	switch {
	case err == nil && have == schema:
		return nil
	case err == nil:
		return fmt.Errorf("extension %s is installed in schema %s, not %s: move it with ALTER EXTENSION %s SET SCHEMA %s (if it is relocatable), or add it with --schema %s",
			name, have, schema, pgx.Identifier{name}.Sanitize(), pgx.Identifier{schema}.Sanitize(), have)
	case !errors.Is(err, pgx.ErrNoRows):
		return fmt.Errorf("look up extension %s: %w", name, err)
	}
	if err := ensureSchema(ctx, c, schema); err != nil {
		return err
	}
	_, err = c.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH SCHEMA "+pgx.Identifier{schema}.Sanitize())
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "0A000" && pe.Hint == "" {
			return fmt.Errorf("create extension %s: %w (is the extension's package installed on this server? see pg_available_extensions)", name, err)
		}
		return fmt.Errorf("create extension %s: %w", name, err)
	}
	return nil
}

// Extensions lists the extensions installed on one node, by name.
func Extensions(ctx context.Context, node Node) ([]Extension, error) {
	c, err := pgx.Connect(ctx, node.DSN)
	if err != nil {
		return nil, fmt.Errorf("node %s: connect: %w", node.Name, err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	rows, err := c.Query(ctx, `SELECT e.extname, e.extversion, n.nspname FROM pg_catalog.pg_extension e
		JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace ORDER BY 1`)
	if err != nil {
		return nil, fmt.Errorf("node %s: list extensions: %w", node.Name, err)
	}
	exts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Extension, error) {
		var e Extension
		err := r.Scan(&e.Name, &e.Version, &e.Schema)
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("node %s: list extensions: %w", node.Name, err)
	}
	return exts, nil
}
