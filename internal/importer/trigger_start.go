package importer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// followerApp is the application_name of the connection that reads the
// queue (import status shows whether one runs).
const followerApp = "pgtenant import follow"

// queueLockKey is the advisory lock (on the legacy database) held by the
// one process that copies or applies the queue.
const queueLockKey = 0x7067746e696d7074 // "pgtnimpt"

// exported is a REPEATABLE READ transaction on the legacy database whose
// snapshot is exported (name) for other sessions to import; snap is its
// pg_snapshot text. It holds while the transaction stays open.
type exported struct {
	conn       *pgx.Conn
	name, snap string
}

func exportSnapshot(ctx context.Context, dsn string) (*exported, error) {
	conn, err := connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to the legacy database: %w", err)
	}
	e := &exported{conn: conn}
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err == nil {
		// One statement: the exported snapshot and pg_current_snapshot()
		// are the transaction's snapshot.
		err = conn.QueryRow(ctx, `SELECT pg_export_snapshot(), pg_current_snapshot()::text`).Scan(&e.name, &e.snap)
	}
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("export a snapshot of the legacy database: %w", err)
	}
	return e, nil
}

func (e *exported) close() {
	if e != nil && e.conn != nil {
		e.conn.Close(context.Background())
		e.conn = nil
	}
}

// lockQueue takes the queue's advisory lock on conn, waiting up to 30s for
// a killed process's session to go.
func lockQueue(ctx context.Context, conn *pgx.Conn) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, int64(queueLockKey)).Scan(&ok); err != nil {
			return fmt.Errorf("lock the change queue: %w", err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("another `pgtenant import start` copies or applies the change queue of this legacy database; stop it first")
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// startTrigger is Start for MethodTrigger: it installs the capture triggers
// and the queue (once), exports a snapshot taken after them, and copies every
// tenant table at it with the copy of the logical method (the same units,
// workers, demultiplexer and binary COPY; the snapshot is the exported one
// instead of a slot's). Each node records in pgtenant_stream.import_queue
// the snapshot its rows are at. A killed run resumes: its rerun exports a
// new snapshot, empties the tables incomplete on each node, brings the
// complete ones to the new snapshot by applying the queue to those tables
// only (a round from the node's snapshot to the new one), and copies the rest.
func (im *Importer) startTrigger(ctx context.Context, imp *Import, opts StartOptions) (*StartResult, error) {
	t0 := time.Now()
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("import start: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	if err := lockQueue(ctx, legacy); err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	rules, shared, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	order, err := copyOrder(ctx, legacy, imp.LegacySchema, rules)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	ts, err := trigTables(ctx, legacy, imp.LegacySchema, rules)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	res := &StartResult{}
	if imp.State == StateServing {
		if err := im.installCapture(ctx, legacy, imp, ts); err != nil {
			return nil, fmt.Errorf("import start: %w", err)
		}
		if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET state = 'copying', updated_at = now() WHERE state = 'serving'`); err != nil {
			return nil, fmt.Errorf("import start: %w", err)
		}
	} else {
		res.Resumed = true
	}
	snap, err := exportSnapshot(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	defer snap.close()
	res.Slot, res.CopyLSN = queueTable, snap.snap

	sc := snapshotCopy{snapshot: snap.name, point: "0/0", log: map[string]any{"method": MethodTrigger, "snapshot": snap.snap}}
	// Each node to the new snapshot: its complete tables by the queue, the
	// others emptied and copied at it.
	sc.catchUp = func(ctx context.Context, cs *copyState) (int64, error) {
		qa := im.newQApplier(legacy, ts)
		defer qa.close()
		if err := qa.reloadTenants(ctx); err != nil {
			return 0, err
		}
		var caught int64
		for _, n := range cs.nodes {
			nd, had, err := qa.openNode(ctx, n.name, n.dsn)
			if err != nil {
				return caught, err
			}
			if !had || len(n.complete) == 0 {
				if err := setPosition(ctx, nd, snap.snap); err != nil {
					return caught, err
				}
				continue
			}
			nd.only = map[string]bool{}
			for tbl := range n.complete {
				nd.only[tbl] = true
			}
			k, err := qa.catchUpNode(ctx, nd, snap.snap)
			if err != nil {
				return caught, fmt.Errorf("node %s: %w", n.name, err)
			}
			caught += int64(k)
		}
		return caught, nil
	}
	return res, im.copyAtSnapshot(ctx, imp, opts, t0, legacy, order, shared, sc, res)
}

// FollowPoll is how often an idle trigger-method follower looks at the queue.
const FollowPoll = 20 * time.Millisecond

// pruneEvery is how often the follower deletes the queue entries every node has.
const pruneEvery = 5 * time.Second

// followTrigger is Follow for MethodTrigger: rounds of the queue applied to
// every node (trigger_apply.go) until ctx ends, a verify's hold between
// rounds, and the entries every node has applied deleted from the queue.
func (im *Importer) followTrigger(ctx context.Context, imp *Import) error {
	cfg, err := pgx.ParseConfig(imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	cfg.RuntimeParams["application_name"] = followerApp
	legacy, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("import follow: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	if err := lockQueue(ctx, legacy); err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	rules, _, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	ts, err := trigTables(ctx, legacy, imp.LegacySchema, rules)
	if err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	qa := im.newQApplier(legacy, ts)
	defer qa.close()
	if err := qa.reloadTenants(ctx); err != nil {
		return err
	}
	if err := qa.reload(ctx); err != nil {
		return err
	}
	shards, err := im.shards(ctx)
	if err != nil {
		return err
	}
	var nodes []*qnode
	checked := map[string]bool{}
	for _, s := range shards {
		if qa.nodes[s.Node] != nil {
			continue
		}
		nd, had, err := qa.openNode(ctx, s.Node, s.NodeDSN)
		if err != nil {
			return fmt.Errorf("import follow: %w", err)
		}
		if !had {
			return fmt.Errorf("import follow: node %s has no queue position; run import start to copy the shards first", s.Node)
		}
		if !checked[s.Node] {
			if err := sameColumns(ctx, legacy, nd.conn, imp.LegacySchema, s.Schema, ts); err != nil {
				return fmt.Errorf("import follow: node %s: %w", s.Node, err)
			}
			checked[s.Node] = true
		}
		nodes = append(nodes, nd)
	}
	// Every node to one common snapshot.
	var now string
	if err := legacy.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&now); err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	for _, nd := range nodes {
		if _, err := qa.catchUpNode(ctx, nd, now); err != nil {
			return im.followEnd(ctx, fmt.Errorf("import follow: node %s: %w", nd.name, err))
		}
	}
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET state = 'streaming', updated_at = now() WHERE state = 'copied'`); err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	im.logger.Info("import following the change queue", "queue", queueTable, "nodes", len(nodes))
	lastPrune := time.Now()
	for {
		var n string
		var verify *int64
		if err := legacy.QueryRow(ctx, `SELECT pg_current_snapshot()::text,
			(SELECT seq FROM `+verifyHoldTable+` WHERE held_at IS NULL AND released_at IS NULL ORDER BY created_at LIMIT 1)`).Scan(&n, &verify); err != nil {
			return im.followEnd(ctx, queueErr(fmt.Errorf("import follow: %w", err)))
		}
		if verify != nil {
			if err := im.holdForVerify(ctx, qa, nodes, imp, *verify); err != nil {
				return im.followEnd(ctx, fmt.Errorf("import follow: %w", err))
			}
			continue
		}
		k, err := qa.round(ctx, nodes, n, false)
		if err != nil {
			return im.followEnd(ctx, fmt.Errorf("import follow: %w", err))
		}
		if time.Since(lastPrune) > pruneEvery {
			// Entries of transactions that ended before the nodes' snapshot
			// are applied everywhere (or were rolled back).
			if _, err := legacy.Exec(ctx, `DELETE FROM `+queueTable+` WHERE xid < pg_snapshot_xmin($1::text::pg_snapshot)`, nodes[0].prev); err != nil {
				return im.followEnd(ctx, queueErr(fmt.Errorf("import follow: prune the queue: %w", err)))
			}
			lastPrune = time.Now()
		}
		if k == 0 {
			if err := sleepCtx(ctx, FollowPoll); err != nil {
				return err
			}
		}
	}
}

// followEnd turns the error of a follower whose import was finished under
// it (the trigger method's queue or the logical slot gone: errQueueGone)
// into a clean end.
func (im *Importer) followEnd(ctx context.Context, err error) error {
	if errors.Is(err, errQueueGone) {
		// import finish drops the queue or the slot, then forgets the import.
		for i := 0; i < 300 && ctx.Err() == nil; i++ {
			if _, lerr := im.load(context.WithoutCancel(ctx)); errors.Is(lerr, ErrNoImport) {
				im.logger.Info("import finished; the follower stops")
				return nil
			}
			_ = sleepCtx(ctx, 100*time.Millisecond)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// holdForVerify serves verify request seq: it exports a snapshot, applies
// the round up to it on every node, records the snapshot's name as held,
// and keeps it (the exporting transaction open, nothing more applied) until
// the verify releases it or holdTimeout passes.
func (im *Importer) holdForVerify(ctx context.Context, qa *qapplier, nodes []*qnode, imp *Import, seq int64) error {
	snap, err := exportSnapshot(ctx, imp.LegacyDSN)
	if err != nil {
		return err
	}
	defer snap.close()
	if _, err := qa.round(ctx, nodes, snap.snap, true); err != nil {
		return err
	}
	if _, err := qa.legacy.Exec(ctx, `UPDATE `+verifyHoldTable+` SET snapshot = $2, held_at = now() WHERE seq = $1`, seq, snap.name); err != nil {
		return fmt.Errorf("verify hold: %w", err)
	}
	deadline := time.Now().Add(holdTimeout)
	for {
		var released bool
		err := qa.legacy.QueryRow(ctx, `SELECT released_at IS NOT NULL FROM `+verifyHoldTable+` WHERE seq = $1`, seq).Scan(&released)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && released {
			return nil
		}
		if err != nil {
			return fmt.Errorf("verify hold: %w", err)
		}
		if time.Now().After(deadline) {
			_, err := qa.legacy.Exec(ctx, `UPDATE `+verifyHoldTable+` SET released_at = now() WHERE seq = $1 AND released_at IS NULL`, seq)
			im.logger.Warn("import: a verify held the queue too long; going on", "seq", seq)
			return err
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// legacyAtHold is legacyAtPoint for MethodTrigger: it asks the follower to
// hold (a verify_hold row), waits until every node has applied the queue up
// to the follower's exported snapshot, and reads the legacy side at it.
func (im *Importer) legacyAtHold(ctx context.Context, imp *Import, legacy *pgx.Conn, rules []tables.Table, ids []string, timeout time.Duration, sums sumsFunc) (map[[2]string]sum, string, func(context.Context) error, error) {
	seq := time.Now().UnixNano()
	if _, err := legacy.Exec(ctx, `INSERT INTO `+verifyHoldTable+` (seq) VALUES ($1)`, seq); err != nil {
		return nil, "", nil, fmt.Errorf("write the verify request on the legacy database: %w", err)
	}
	cleanup := func() {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = legacy.Exec(bg, `DELETE FROM `+verifyHoldTable+` WHERE seq = $1 OR created_at < now() - interval '1 day'`, seq)
	}
	deadline := time.Now().Add(timeout)
	var name *string
	for {
		if err := legacy.QueryRow(ctx, `SELECT snapshot FROM `+verifyHoldTable+` WHERE seq = $1 AND held_at IS NOT NULL`, seq).Scan(&name); err != nil && !errors.Is(err, pgx.ErrNoRows) {
			cleanup()
			return nil, "", nil, fmt.Errorf("wait for the change queue's follower: %w", err)
		}
		if name != nil {
			break
		}
		if time.Now().After(deadline) {
			cleanup()
			return nil, "", nil, ErrVerifyNoStream
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			cleanup()
			return nil, "", nil, err
		}
	}
	reader, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	l, err := sums(ctx, reader, *name, imp.LegacySchema, rules, ids)
	reader.Close(context.Background())
	if err != nil {
		cleanup()
		return nil, "", nil, fmt.Errorf("read the legacy database at the verify's point: %w", err)
	}
	release := func(ctx context.Context) error {
		defer cleanup()
		tag, err := legacy.Exec(ctx, `UPDATE `+verifyHoldTable+` SET released_at = now() WHERE seq = $1 AND released_at IS NULL`, seq)
		if err != nil {
			return fmt.Errorf("release the change queue's follower: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return ErrVerifyHoldLapsed
		}
		return nil
	}
	return l, "", release, nil
}

// sameColumns checks that each shard table on the node has the legacy
// table's columns in the same order (a row image is read back by position).
func sameColumns(ctx context.Context, legacy, node *pgx.Conn, legacySchema, schema string, ts map[string]*trigTable) error {
	for _, name := range sortedKeys(ts) {
		var cols []string
		if err := node.QueryRow(ctx, `SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute
			WHERE attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND attnum > 0 AND NOT attisdropped`, schema, name).Scan(&cols); err != nil {
			return fmt.Errorf("read the columns of %s.%s: %w", schema, name, err)
		}
		if strings.Join(cols, ",") != strings.Join(ts[name].all, ",") {
			return fmt.Errorf("table %s has columns (%s) on the shards and (%s) on the legacy database; --method trigger needs the same columns in the same order (apply the baseline from import schema, and no migration during the import)",
				name, strings.Join(cols, ", "), strings.Join(ts[name].all, ", "))
		}
	}
	return nil
}

// queueStatus fills st for MethodTrigger: Lag is the queue's entries (the
// follower deletes those applied every few seconds), SlotActive whether a
// follower reads the queue.
func (im *Importer) queueStatus(ctx context.Context, imp *Import, st *Status) {
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return
	}
	defer legacy.Close(context.Background())
	var n *int64
	if err := legacy.QueryRow(ctx, `SELECT CASE WHEN to_regclass($1) IS NOT NULL THEN (SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass($1)) END,
		EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND application_name = $2)`, queueTable, followerApp).Scan(&n, &st.SlotActive); err == nil && n != nil {
		st.Lag = max(*n, 0)
	}
}
