package migrate

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sync"

	"github.com/jackc/pgx/v5"
)

// ShardStatus is where one shard stands against the migrations in a directory.
type ShardStatus struct {
	Target Target
	// Current is the highest version applied on the shard; zero when none.
	Current int64
	// Latest is the highest version available; zero when there are none.
	Latest int64
	// Pending are the available versions not applied on the shard, ascending.
	Pending []int64
}

// Behind reports whether the shard has pending migrations.
func (s ShardStatus) Behind() bool { return len(s.Pending) > 0 }

// Status reads every target's applied versions and compares them with the
// migrations in fsys. It returns one ShardStatus per target, in the order
// given. It reads with one connection per node and changes nothing. A
// target whose schema is missing is an error (*ShardError wrapping
// ErrNoSchema).
func Status(ctx context.Context, fsys fs.FS, targets []Target) ([]ShardStatus, error) {
	available, err := Versions(fsys)
	if err != nil {
		return nil, err
	}
	nodes, err := groupByNode(targets)
	if err != nil {
		return nil, err
	}
	byTarget := make(map[[2]string]ShardStatus, len(targets))
	var (
		mu   sync.Mutex
		wg   sync.WaitGroup
		errs = make([]error, len(nodes))
	)
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = func() error {
				conn, err := pgx.ConnectConfig(ctx, n.cfg)
				if err != nil {
					return fmt.Errorf("connect to node %s: %w", n.name, err)
				}
				defer conn.Close(context.WithoutCancel(ctx))
				for _, t := range n.targets {
					applied, err := appliedVersions(ctx, conn, t)
					if err != nil {
						return err
					}
					st := ShardStatus{Target: t}
					if len(available) > 0 {
						st.Latest = available[len(available)-1]
					}
					if len(applied) > 0 {
						st.Current = applied[len(applied)-1]
					}
					for _, v := range available {
						if _, ok := slices.BinarySearch(applied, v); !ok {
							st.Pending = append(st.Pending, v)
						}
					}
					mu.Lock()
					byTarget[[2]string{t.Node, t.Schema}] = st
					mu.Unlock()
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	out := make([]ShardStatus, len(targets))
	for i, t := range targets {
		out[i] = byTarget[[2]string{t.Node, t.Schema}]
	}
	return out, nil
}

// appliedVersions returns the versions applied on t's shard, ascending: those
// whose latest goose row says applied. A shard without a version table has
// none.
func appliedVersions(ctx context.Context, conn *pgx.Conn, t Target) ([]int64, error) {
	var schemaExists, tableExists bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1),
		EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'goose_db_version')`, t.Schema).
		Scan(&schemaExists, &tableExists)
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	if !schemaExists {
		return nil, &ShardError{Target: t, Err: ErrNoSchema}
	}
	if !tableExists {
		return nil, nil
	}
	table := pgx.Identifier{t.Schema, "goose_db_version"}.Sanitize()
	rows, err := conn.Query(ctx, `SELECT version_id FROM (
		SELECT DISTINCT ON (version_id) version_id, is_applied FROM `+table+`
		WHERE version_id > 0 ORDER BY version_id, id DESC) v
		WHERE is_applied ORDER BY version_id`)
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	vs, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("read version table: %w", err)}
	}
	return vs, nil
}
