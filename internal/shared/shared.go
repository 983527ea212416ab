package shared

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultSchema is the shared schema when none is given.
const DefaultSchema = "public"

// Node is one Postgres server to fan out to.
type Node struct {
	Name, DSN string
}

// NodeError is the failure of one node; the others go on.
type NodeError struct {
	Node string
	Err  error
}

func (e *NodeError) Error() string { return fmt.Sprintf("node %s: %v", e.Node, e.Err) }

// Unwrap returns the node's error.
func (e *NodeError) Unwrap() error { return e.Err }

// fanOut runs f on every node at once, each with its own connection, and
// returns the nodes' errors joined (each a *NodeError), sorted by node.
func fanOut(ctx context.Context, nodes []Node, f func(ctx context.Context, c *pgx.Conn, n Node) error) error {
	if len(nodes) == 0 {
		return errors.New("no nodes are registered; add one with `pgtenant node add`")
	}
	var mu sync.Mutex
	var errs []*NodeError
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				c, err := pgx.Connect(ctx, n.DSN)
				if err != nil {
					return fmt.Errorf("connect: %w", err)
				}
				defer c.Close(context.WithoutCancel(ctx))
				return f(ctx, c, n)
			}()
			if err != nil {
				mu.Lock()
				errs = append(errs, &NodeError{Node: n.Name, Err: err})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(errs, func(i, j int) bool { return errs[i].Node < errs[j].Node })
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = e
	}
	return errors.Join(out...)
}

// schemaOr returns schema, or DefaultSchema when it is empty.
func schemaOr(schema string) string {
	if schema == "" {
		return DefaultSchema
	}
	return schema
}

// execer is a connection or a transaction.
type execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// ensureSchema creates schema if it does not exist.
func ensureSchema(ctx context.Context, q execer, schema string) error {
	_, err := q.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{schema}.Sanitize())
	if err != nil {
		return fmt.Errorf("create schema %s: %w", schema, err)
	}
	return nil
}
