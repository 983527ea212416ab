package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
)

// CutoverOptions say which shards to cut over and how.
type CutoverOptions struct {
	// Shards to cut over; with All, every shard copied and not cut over yet.
	Shards []int
	All    bool
	// Parallel is how many shards are cut over at once; 0 means 1.
	Parallel int
	// FenceLease is the fence's lease, renewed every second; 0 means
	// move.DefaultFenceLease. A cutover that dies leaves the shard fenced
	// at most this long: a router then serves it from the legacy database again.
	FenceLease time.Duration
	// MarkerTimeout bounds the wait for the stream to apply up to the
	// marker; 0 means 30s.
	MarkerTimeout time.Duration
	// PollInterval is how often the node is asked for the marker; 0 means 2ms.
	PollInterval time.Duration
}

// CutoverResult is one shard's cutover.
type CutoverResult struct {
	Shard int
	Node  string
	// Pause is how long the shard's new transactions were held: from the
	// fence to the flip.
	Pause time.Duration
	Err   error
}

// ErrMarkerTimeout: the stream did not apply the marker in time.
var ErrMarkerTimeout = errors.New("the change stream did not bring the cutover marker to the node in time; is `pgtenant import start` (or `import follow`) running?")

// Cutover moves shards from the legacy database to their nodes, each with
// the fence shard moves use: the shard is fenced in the catalog with a
// lease (catalog.RouterFencer waits until every router holds its new
// transactions and its running ones ended), a marker row is committed on
// the legacy database, the stream applies up to it on the shard's node, the
// shard's sequences are set past the legacy ones, and one catalog
// transaction flips the shard to its node (import_shards.state 'cutover',
// epoch + 1, active). Routers then release the held transactions to the
// node. A failure before the flip gives the shard back to the legacy
// database. Each shard pauses only its own tenants.
func (im *Importer) Cutover(ctx context.Context, opts CutoverOptions) ([]CutoverResult, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 1
	}
	if opts.FenceLease <= 0 {
		opts.FenceLease = move.DefaultFenceLease
	}
	if opts.MarkerTimeout <= 0 {
		opts.MarkerTimeout = 30 * time.Second
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Millisecond
	}
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	if imp.State != StateStreaming {
		return nil, fmt.Errorf("import cutover: the import is %s; cutover needs every shard copied and the change stream running (pgtenant import start)", imp.State)
	}
	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[int]ShardProgress{}
	for _, s := range all {
		byID[s.Shard] = s
	}
	var todo []ShardProgress
	if opts.All {
		for _, s := range all {
			if s.State == ShardCopied {
				todo = append(todo, s)
			}
		}
	}
	for _, id := range opts.Shards {
		s, ok := byID[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("import cutover: shard %d is not part of the import", id)
		case s.State == ShardCutover:
			return nil, fmt.Errorf("import cutover: shard %d is cut over already", id)
		case s.State != ShardCopied:
			return nil, fmt.Errorf("import cutover: shard %d is %s, not copied", id, s.State)
		}
		todo = append(todo, s)
	}
	results := make([]CutoverResult, len(todo))
	var wg sync.WaitGroup
	sem := make(chan struct{}, opts.Parallel)
	for i, s := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			pause, err := im.cutoverShard(ctx, imp, s, opts)
			results[i] = CutoverResult{Shard: s.Shard, Node: s.Node, Pause: pause, Err: err}
			im.cat.RecordOperation(context.WithoutCancel(ctx), "import cutover", map[string]any{"shard": s.Shard, "node": s.Node, "pause_ms": float64(pause.Microseconds()) / 1000}, err)
		}()
	}
	wg.Wait()
	sort.Slice(results, func(i, j int) bool { return results[i].Shard < results[j].Shard })
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", r.Shard, r.Err))
		}
	}
	return results, errors.Join(errs...)
}

func (im *Importer) cutoverShard(ctx context.Context, imp *Import, s ShardProgress, opts CutoverOptions) (time.Duration, error) {
	pool := im.cat.Pool()
	fencer := catalog.RouterFencer{Catalog: im.cat}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return 0, fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	node, err := connect(ctx, s.NodeDSN)
	if err != nil {
		return 0, fmt.Errorf("connect to node %s: %w", s.Node, err)
	}
	defer node.Close(context.Background())

	t0 := time.Now()
	tag, err := pool.Exec(ctx, `WITH u AS (UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1 AND state = 'active' RETURNING id)
		INSERT INTO pgtenant.fence_leases (shard, expires_at) SELECT id, now() + $2::bigint * interval '1 millisecond' FROM u
		ON CONFLICT (shard) DO UPDATE SET move_id = NULL, expires_at = excluded.expires_at`, s.Shard, opts.FenceLease.Milliseconds())
	if err != nil {
		return 0, fmt.Errorf("fence the shard: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return 0, fmt.Errorf("fence the shard: it is not active (a move or another cutover holds it)")
	}
	lctx, stopLease := context.WithCancelCause(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-lctx.Done():
				return
			case <-t.C:
				tag, err := pool.Exec(lctx, `UPDATE pgtenant.fence_leases SET expires_at = now() + $2::bigint * interval '1 millisecond' WHERE shard = $1 AND expires_at > now()`,
					s.Shard, opts.FenceLease.Milliseconds())
				if err == nil && tag.RowsAffected() == 0 {
					stopLease(errors.New("the fence lease lapsed; a router gave the shard back to the legacy database"))
					return
				}
			}
		}
	}()
	defer func() { stopLease(nil); <-renewed }()
	unfence := func(cause error) error {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := pool.Exec(bg, `WITH l AS (DELETE FROM pgtenant.fence_leases WHERE shard = $1)
			UPDATE pgtenant.shards SET state = 'active' WHERE id = $1 AND state = 'fenced'`, s.Shard); err != nil {
			return errors.Join(cause, fmt.Errorf("unfence: %w", err))
		}
		_ = fencer.Unfence(bg, s.Shard)
		return cause
	}
	if err := fencer.Fence(lctx, s.Shard); err != nil {
		return 0, unfence(err)
	}
	seq := rand.Int64N(1 << 62)
	if _, err := legacy.Exec(lctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, s.Shard, seq); err != nil {
		return 0, unfence(fmt.Errorf("write the marker on the legacy database: %w", err))
	}
	deadline := time.Now().Add(opts.MarkerTimeout)
	for {
		var ok bool
		if err := node.QueryRow(lctx, `SELECT EXISTS (SELECT FROM `+nodeMarkers+` WHERE shard = $1 AND seq = $2)`, s.Shard, seq).Scan(&ok); err != nil {
			return 0, unfence(fmt.Errorf("wait for the marker on node %s: %w", s.Node, err))
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			return 0, unfence(ErrMarkerTimeout)
		}
		time.Sleep(opts.PollInterval)
	}
	if err := syncSequences(lctx, legacy, node, imp.LegacySchema, s.Schema); err != nil {
		return 0, unfence(err)
	}
	var pause time.Duration
	err = pgx.BeginFunc(lctx, pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(lctx, `DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND expires_at > now()`, s.Shard)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errors.New("the fence lease lapsed before the flip")
		}
		pause = time.Since(t0)
		if _, err := tx.Exec(lctx, `UPDATE pgtenant.import_shards SET state = 'cutover', pause_ms = $2, updated_at = now() WHERE shard = $1 AND state = 'copied'`,
			s.Shard, float64(pause.Microseconds())/1000); err != nil {
			return err
		}
		tag, err = tx.Exec(lctx, `UPDATE pgtenant.shards SET state = 'active', epoch = epoch + 1 WHERE id = $1 AND state = 'fenced'`, s.Shard)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errors.New("the shard is no longer fenced")
		}
		_, err = tx.Exec(lctx, `SELECT pg_notify('pgtenant_map', $1)`, strconv.Itoa(s.Shard))
		return err
	})
	if err != nil {
		if c := context.Cause(lctx); c != nil && !errors.Is(c, context.Canceled) {
			err = c
		}
		return 0, unfence(fmt.Errorf("flip: %w", err))
	}
	stopLease(nil)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := fencer.Unfence(bg, s.Shard); err != nil {
		im.logger.Warn("cutover: routers have not all acknowledged the flip yet", "shard", s.Shard, "err", err)
	}
	im.logger.Info("shard cut over", "shard", s.Shard, "node", s.Node, "pause", pause)
	return pause, nil
}

// syncSequences sets each sequence of the shard's schema on its node to
// the value of the legacy sequence of the same table column when that is
// higher, so ids the shard hands out next are past every id copied.
func syncSequences(ctx context.Context, legacy, node *pgx.Conn, legacySchema, schema string) error {
	rows, err := node.Query(ctx, `SELECT c.relname, a.attname, pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
		AND pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname) IS NOT NULL`, schema)
	if err != nil {
		return fmt.Errorf("list the shard's sequences: %w", err)
	}
	type seqCol struct{ table, col, seq string }
	var seqs []seqCol
	var sc seqCol
	if _, err := pgx.ForEachRow(rows, []any{&sc.table, &sc.col, &sc.seq}, func() error { seqs = append(seqs, sc); return nil }); err != nil {
		return fmt.Errorf("list the shard's sequences: %w", err)
	}
	for _, sc := range seqs {
		var exists bool
		if err := legacy.QueryRow(ctx, `SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL`, legacySchema, sc.table).Scan(&exists); err != nil {
			return fmt.Errorf("look up %s on the legacy database: %w", sc.table, err)
		}
		if !exists {
			continue // the shard's own tables (goose's versions)
		}
		var last *int64
		err := legacy.QueryRow(ctx, `SELECT pg_sequence_last_value(pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident($2), $3))`,
			legacySchema, sc.table, sc.col).Scan(&last)
		if err != nil {
			return fmt.Errorf("read the legacy sequence of %s.%s: %w", sc.table, sc.col, err)
		}
		if last == nil {
			continue
		}
		if _, err := node.Exec(ctx, `SELECT setval($1::regclass, $2) WHERE $2 > coalesce(pg_sequence_last_value($1::regclass), 0)`, sc.seq, *last); err != nil {
			return fmt.Errorf("set sequence %s: %w", sc.seq, err)
		}
	}
	return nil
}
