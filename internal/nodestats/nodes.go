package nodestats

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Node is a node to read: its name and its connection string with secret
// references already resolved (catalog.ResolveDSN).
type Node struct {
	Name string
	DSN  string
}

// Result is one node's health, or why it could not be read: an element of
// `pgtenant node stats --json`.
type Result struct {
	Node string `json:"node"`
	// Error is set when the node did not answer or could not be read; it
	// starts with "unreachable: " when the connection failed. It carries no
	// password.
	Error string `json:"error,omitempty"`
	// Stats is nil when Error is set.
	Stats *Stats `json:"stats"`
}

// DefaultTimeout bounds one node's connection and collection when
// Options.Timeout is 0.
const DefaultTimeout = 15 * time.Second

// CollectNodes connects to every node at once and collects its health, each
// within opts.Timeout. Results are in the order of nodes; a node that fails
// has its Error set and does not hold up the others.
func CollectNodes(ctx context.Context, nodes []Node, opts Options) []Result {
	out := make([]Result, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		out[i].Node = n.Name
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := collectNode(ctx, n.DSN, opts)
			if err != nil {
				out[i].Error = err.Error()
				return
			}
			out[i].Stats = &s
		}()
	}
	wg.Wait()
	return out
}

func collectNode(ctx context.Context, dsn string, opts Options) (Stats, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// pgx's parse error quotes the string, password included: keep
		// only its cause.
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) && pe.Unwrap() != nil {
			err = pe.Unwrap()
		}
		return Stats{}, fmt.Errorf("parse the node's connection string: %w", err)
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 5*time.Second {
		cfg.ConnectTimeout = 5 * time.Second
	}
	cfg.RuntimeParams["application_name"] = "pgtenant node stats"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return Stats{}, fmt.Errorf("unreachable: %w", err)
	}
	defer conn.Close(context.Background())
	return CollectWith(ctx, conn, opts)
}
