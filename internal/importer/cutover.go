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
	// Fenced, Marked and Flipped are the parts of the pause: until every
	// router held the shard, until the marker was applied on the node,
	// until the flip committed.
	Fenced, Marked, Flipped time.Duration
	Err                     error
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
			r := CutoverResult{Shard: s.Shard, Node: s.Node}
			r.Err = im.cutoverShard(ctx, imp, s, opts, &r)
			results[i] = r
			im.cat.RecordOperation(context.WithoutCancel(ctx), "import cutover", map[string]any{"shard": s.Shard, "node": s.Node, "pause_ms": float64(r.Pause.Microseconds()) / 1000}, r.Err)
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

func (im *Importer) cutoverShard(ctx context.Context, imp *Import, s ShardProgress, opts CutoverOptions, r *CutoverResult) error {
	pool := im.cat.Pool()
	fencer := catalog.RouterFencer{Catalog: im.cat}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	node, err := connect(ctx, s.NodeDSN)
	if err != nil {
		return fmt.Errorf("connect to node %s: %w", s.Node, err)
	}
	defer node.Close(context.Background())

	pairs, err := sequencePairs(ctx, legacy, node, imp.LegacySchema, s.Schema)
	if err != nil {
		return err
	}
	t0 := time.Now()
	tag, err := pool.Exec(ctx, `WITH u AS (UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1 AND state = 'active' RETURNING id)
		INSERT INTO pgtenant.fence_leases (shard, expires_at) SELECT id, now() + $2::bigint * interval '1 millisecond' FROM u
		ON CONFLICT (shard) DO UPDATE SET move_id = NULL, expires_at = excluded.expires_at`, s.Shard, opts.FenceLease.Milliseconds())
	if err != nil {
		return fmt.Errorf("fence the shard: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("fence the shard: it is not active (a move or another cutover holds it)")
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
		return unfence(err)
	}
	r.Fenced = time.Since(t0)
	// synchronous_commit on: the WAL sender sends only flushed WAL, and a
	// server running with it off would flush the marker up to
	// wal_writer_delay later.
	seq := rand.Int64N(1 << 62)
	err = pgx.BeginFunc(lctx, legacy, func(tx pgx.Tx) error {
		if _, err := tx.Exec(lctx, `SET LOCAL synchronous_commit = on`); err != nil {
			return err
		}
		_, err := tx.Exec(lctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, s.Shard, seq)
		return err
	})
	if err != nil {
		return unfence(fmt.Errorf("write the marker on the legacy database: %w", err))
	}
	deadline := time.Now().Add(opts.MarkerTimeout)
	for {
		var ok bool
		if err := node.QueryRow(lctx, `SELECT EXISTS (SELECT FROM `+nodeMarkers+` WHERE shard = $1 AND seq = $2)`, s.Shard, seq).Scan(&ok); err != nil {
			return unfence(fmt.Errorf("wait for the marker on node %s: %w", s.Node, err))
		}
		if ok {
			r.Marked = time.Since(t0)
			break
		}
		if time.Now().After(deadline) {
			return unfence(ErrMarkerTimeout)
		}
		time.Sleep(opts.PollInterval)
	}
	if err := syncSequences(lctx, legacy, node, pairs); err != nil {
		return unfence(err)
	}
	err = pgx.BeginFunc(lctx, pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(lctx, `DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND expires_at > now()`, s.Shard)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return errors.New("the fence lease lapsed before the flip")
		}
		r.Pause = time.Since(t0)
		if _, err := tx.Exec(lctx, `UPDATE pgtenant.import_shards SET state = 'cutover', pause_ms = $2, updated_at = now() WHERE shard = $1 AND state = 'copied'`,
			s.Shard, float64(r.Pause.Microseconds())/1000); err != nil {
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
		return unfence(fmt.Errorf("flip: %w", err))
	}
	r.Pause = time.Since(t0) // the flip's commit included
	r.Flipped = r.Pause
	stopLease(nil)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := fencer.Unfence(bg, s.Shard); err != nil {
		im.logger.Warn("cutover: routers have not all acknowledged the flip yet", "shard", s.Shard, "err", err)
	}
	im.logger.Info("shard cut over", "shard", s.Shard, "node", s.Node, "pause", r.Pause, "fenced", r.Fenced, "marked", r.Marked)
	return nil
}

// seqPair is a sequence of the shard's schema and the legacy sequence of
// the same table column.
type seqPair struct{ shard, legacy string }

// sequencePairs lists the shard's sequences that have a legacy counterpart.
func sequencePairs(ctx context.Context, legacy, node *pgx.Conn, legacySchema, schema string) ([]seqPair, error) {
	rows, err := node.Query(ctx, `SELECT c.relname, a.attname, pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
		AND pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname) IS NOT NULL`, schema)
	if err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	type seqCol struct{ table, col, seq string }
	var seqs []seqCol
	var sc seqCol
	if _, err := pgx.ForEachRow(rows, []any{&sc.table, &sc.col, &sc.seq}, func() error { seqs = append(seqs, sc); return nil }); err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	var out []seqPair
	for _, sc := range seqs {
		var seq *string
		err := legacy.QueryRow(ctx, `SELECT CASE WHEN to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL
			THEN pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident($2), $3) END`, legacySchema, sc.table, sc.col).Scan(&seq)
		if err != nil {
			return nil, fmt.Errorf("find the legacy sequence of %s.%s: %w", sc.table, sc.col, err)
		}
		if seq != nil { // else one of the shard's own tables (goose's versions)
			out = append(out, seqPair{shard: sc.seq, legacy: *seq})
		}
	}
	return out, nil
}

// syncSequences sets each shard sequence to its legacy sequence's value
// when that is higher, so ids the shard hands out next are past every id
// copied: one round trip to each side.
func syncSequences(ctx context.Context, legacy, node *pgx.Conn, pairs []seqPair) error {
	if len(pairs) == 0 {
		return nil
	}
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.legacy
	}
	rows, err := legacy.Query(ctx, `SELECT coalesce(pg_sequence_last_value(s::regclass), 0) FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i`, names)
	if err != nil {
		return fmt.Errorf("read the legacy sequences: %w", err)
	}
	last, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("read the legacy sequences: %w", err)
	}
	shardNames := make([]string, len(pairs))
	for i, p := range pairs {
		shardNames[i] = p.shard
	}
	if _, err := node.Exec(ctx, `SELECT setval(s::regclass, v) FROM unnest($1::text[], $2::bigint[]) AS u(s, v)
		WHERE v > coalesce(pg_sequence_last_value(s::regclass), 0)`, shardNames, last); err != nil {
		return fmt.Errorf("set the shard's sequences: %w", err)
	}
	return nil
}
