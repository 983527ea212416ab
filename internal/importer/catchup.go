package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// errCaughtUp stops the catch-up stream once it has passed its point.
var errCaughtUp = errors.New("the change stream passed the new snapshot's point")

// catchUp makes the applier apply, up to until, only the changes of the
// tables complete on each node, after the point their rows are at.
type catchUp struct {
	until stream.LSN
	// complete: node → table → the point its rows are at.
	complete map[string]map[string]stream.LSN
	applied  int64
}

// catchUp brings the tables a killed run completed to the point until
// (a new snapshot's): it streams the import's slot from each node's
// applied position and applies each change of those tables committed
// after the point their rows are at and no later than until, in one
// transaction per node and batch that records the node's position (as
// Follow does). A marker row written on the legacy database after the
// snapshot ends the stream: once a transaction past until arrives, every
// one before it has been applied. Then the tables are recorded at until.
// It returns the changes applied.
func (im *Importer) catchUp(ctx context.Context, imp *Import, rules []tables.Table, cs *copyState, until stream.LSN) (int64, error) {
	startLSN, err := stream.ParseLSN(imp.StartLSN)
	if err != nil {
		return 0, fmt.Errorf("slot start: %w", err)
	}
	cu := &catchUp{until: until, complete: map[string]map[string]stream.LSN{}}
	a := &applier{im: im, legacy: imp.LegacySchema, rules: map[string]tables.Table{}, nodes: map[string]*stream.TableApplier{},
		pos: map[string]stream.LSN{}, rels: map[[2]any]*stream.Relation{}, parents: map[[2]string]string{}, log: im.logger, catchUp: cu}
	for _, t := range rules {
		a.rules[t.Name] = t
	}
	defer func() {
		for _, ta := range a.nodes {
			ta.Conn.Close(context.Background())
		}
	}()
	from := stream.LSN(0)
	for _, n := range cs.nodes {
		m := map[string]stream.LSN{}
		for tbl, l := range n.complete {
			if m[tbl], err = stream.ParseLSN(l); err != nil {
				return 0, fmt.Errorf("node %s: table %s: %w", n.name, tbl, err)
			}
		}
		cu.complete[n.name] = m
		conn, err := connectApply(ctx, n.dsn)
		if err != nil {
			return 0, fmt.Errorf("connect to node %s: %w", n.name, err)
		}
		ta := &stream.TableApplier{Conn: conn, Name: positionName, Guarded: true}
		a.nodes[n.name] = ta
		pos, ok, err := stream.LoadPosition(ctx, conn, positionName)
		if err != nil {
			return 0, fmt.Errorf("node %s: %w", n.name, err)
		}
		if ok {
			ta.From = pos
		} else {
			pos = startLSN
		}
		a.pos[n.name] = pos
		if from == 0 || pos < from {
			from = pos
		}
	}
	if err := a.reload(ctx); err != nil {
		return 0, err
	}
	if err := a.reloadTenants(ctx); err != nil {
		return 0, err
	}
	if from < until {
		legacy, err := connect(ctx, imp.LegacyDSN)
		if err != nil {
			return 0, fmt.Errorf("connect to the legacy database: %w", err)
		}
		err = pgx.BeginFunc(ctx, legacy, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, markerCatchUpEnd, rand.Int64N(1<<62))
			return err
		})
		legacy.Close(context.Background())
		if err != nil {
			return 0, fmt.Errorf("write the end marker on the legacy database: %w", err)
		}
		s := stream.New(stream.Config{DSN: imp.LegacyDSN, Slot: imp.Slot, Publications: []string{imp.Publication}, Start: from, Applier: a, Logger: im.logger})
		if err := s.Run(ctx); !errors.Is(err, errCaughtUp) {
			return cu.applied, fmt.Errorf("stream from %s to %s: %w", from, until, err)
		}
	}
	for _, n := range cs.nodes {
		if _, err := n.conn.Exec(ctx, `UPDATE `+copyProgressTable+` SET copy_lsn = $1::pg_lsn WHERE copy_lsn < $1::pg_lsn`, until.String()); err != nil {
			return cu.applied, fmt.Errorf("node %s: record the tables at %s: %w", n.name, until, err)
		}
		for tbl := range n.complete {
			n.complete[tbl] = until.String()
		}
	}
	im.logger.Info("import: tables copied before brought to the new snapshot", "from", from, "to", until, "changes", cu.applied)
	return cu.applied, nil
}
