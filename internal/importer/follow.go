package importer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// prepareLegacy makes what the change stream needs on the legacy database,
// once, before the slot: REPLICA IDENTITY FULL on the tables whose identity
// does not carry the column that finds their tenant (a delete must say whose
// row it was; restored by Finish), the marker table, and the publication of
// the tenant tables and the marker table.
func (im *Importer) prepareLegacy(ctx context.Context, legacy *pgx.Conn, imp *Import, rules []tables.Table) error {
	if imp.Publication != "" {
		return nil
	}
	if ap, err := im.apartmentOf(ctx); err != nil || ap != nil {
		if err != nil {
			return err
		}
		return im.prepareLegacyApartment(ctx, legacy, imp, ap) // a schema per tenant
	}
	full := []string{}
	for _, t := range rules {
		col := t.TenantColumn
		if t.Kind == tables.KindChild {
			col = t.ParentKey
		}
		var covered bool
		err := legacy.QueryRow(ctx, `SELECT c.relreplident = 'f' OR EXISTS (
				SELECT FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
				WHERE i.indrelid = c.oid AND a.attname = $2
				AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
			FROM pg_class c WHERE c.oid = (quote_ident($3) || '.' || quote_ident($1))::regclass`, t.Name, col, imp.LegacySchema).Scan(&covered)
		if err != nil {
			return fmt.Errorf("read the replica identity of %s: %w", t.Name, err)
		}
		if !covered {
			if _, err := legacy.Exec(ctx, "ALTER TABLE "+pgx.Identifier{imp.LegacySchema, t.Name}.Sanitize()+" REPLICA IDENTITY FULL"); err != nil {
				return fmt.Errorf("set REPLICA IDENTITY FULL on %s (its deletes must carry %s): %w", t.Name, col, err)
			}
			full = append(full, t.Name)
		}
	}
	if _, err := legacy.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+markerSchema+`;
		CREATE TABLE IF NOT EXISTS `+markerSchema+`.`+markerTable+` (shard int NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shard, seq))`); err != nil {
		return fmt.Errorf("create the marker table on the legacy database: %w", err)
	}
	var exists bool
	if err := legacy.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, PublicationName).Scan(&exists); err != nil {
		return fmt.Errorf("look for publication %s: %w", PublicationName, err)
	}
	if !exists {
		names := []string{markerSchema + "." + markerTable}
		for _, t := range rules {
			names = append(names, pgx.Identifier{imp.LegacySchema, t.Name}.Sanitize())
		}
		if _, err := legacy.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{PublicationName}.Sanitize()+" FOR TABLE "+strings.Join(names, ", ")); err != nil {
			return fmt.Errorf("create publication %s on the legacy database: %w", PublicationName, err)
		}
	}
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET publication = $1, full_identity = $2, updated_at = now()`, PublicationName, full); err != nil {
		return fmt.Errorf("record the publication: %w", err)
	}
	imp.Publication = PublicationName
	return nil
}

// Follow streams the legacy database's changes from the import's slot and
// applies each row change to the shard of its tenant until ctx ends (it
// then returns ctx's error). Each node records the position it applied up
// to in the transaction that applies it, so a killed Follow resumes with
// nothing lost or applied twice.
func (im *Importer) Follow(ctx context.Context) error {
	imp, err := im.load(ctx)
	if err != nil {
		return err
	}
	if imp.State != StateCopied && imp.State != StateStreaming {
		return fmt.Errorf("import follow: the import is %s; run import start to copy every shard first", imp.State)
	}
	if imp.Method == MethodTrigger {
		return im.followTrigger(ctx, imp)
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("import follow: connect to the legacy database: %w", err)
	}
	rules, _, err := im.streamRules(ctx, legacy, imp.LegacySchema)
	legacy.Close(context.Background())
	if err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	startLSN, err := stream.ParseLSN(imp.StartLSN)
	if err != nil {
		return fmt.Errorf("import follow: slot start: %w", err)
	}
	a := &applier{im: im, legacy: imp.LegacySchema, rules: map[string]tables.Table{}, nodes: map[string]*stream.TableApplier{},
		pos: map[string]stream.LSN{}, rels: map[[2]any]*stream.Relation{}, parents: map[[2]string]string{}, log: im.logger}
	for _, t := range rules {
		a.rules[t.Name] = t
	}
	if err := a.reload(ctx); err != nil {
		return err
	}
	if err := a.reloadTenants(ctx); err != nil {
		return err
	}
	defer func() {
		for _, ta := range a.nodes {
			ta.Conn.Close(context.Background())
		}
	}()
	from := stream.LSN(0)
	shards, err := im.shards(ctx)
	if err != nil {
		return err
	}
	for _, s := range shards {
		if a.nodes[s.Node] != nil {
			continue
		}
		conn, err := connectApply(ctx, s.NodeDSN)
		if err != nil {
			return fmt.Errorf("import follow: connect to node %s: %w", s.Node, err)
		}
		ta := &stream.TableApplier{Conn: conn, Name: positionName, Guarded: true}
		a.nodes[s.Node] = ta
		if err := stream.EnsurePositionTable(ctx, conn); err != nil {
			return fmt.Errorf("node %s: %w", s.Node, err)
		}
		if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+nodeMarkers+` (shard int NOT NULL, seq bigint NOT NULL, at timestamptz, PRIMARY KEY (shard, seq))`); err != nil {
			return fmt.Errorf("node %s: create the marker table: %w", s.Node, err)
		}
		pos, ok, err := stream.LoadPosition(ctx, conn, positionName)
		if err != nil {
			return fmt.Errorf("node %s: %w", s.Node, err)
		}
		if ok {
			ta.From = pos
		} else {
			pos = startLSN
		}
		a.pos[s.Node] = pos
		if from == 0 || pos < from {
			from = pos
		}
	}
	if err := a.loadRejects(ctx, from); err != nil {
		return err
	}
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET state = 'streaming', updated_at = now() WHERE state = 'copied'`); err != nil {
		return fmt.Errorf("import follow: %w", err)
	}
	// Each node applies its part of the batches by itself (applypipe.go);
	// a node's failure ends the stream.
	ctx, fail := context.WithCancelCause(ctx)
	a.pipe = newPipeline(a.nodes, fail)
	a.pipe.trace = im.trace
	a.pipe.start(ctx)
	defer func() {
		fail(context.Canceled)
		a.pipe.wait()
	}()
	im.logger.Info("import streaming", "slot", imp.Slot, "from", from)
	// A run killed a moment ago may still hold the slot: its WAL sender
	// ends once it notices its client is gone.
	t0 := time.Now()
	for {
		s := stream.New(stream.Config{DSN: imp.LegacyDSN, Slot: imp.Slot, Publications: []string{imp.Publication}, Start: from, Applier: asyncApplier{a}, Logger: im.logger})
		err := s.Run(ctx)
		if !isObjectInUse(err) || s.Applied() != from || time.Since(t0) > slotBusyWait {
			if err != nil && ctx.Err() == nil && im.slotDropped(ctx, imp, err) {
				err = errQueueGone // import finish dropped the slot: see followEnd
			}
			return im.followEnd(ctx, err)
		}
		im.logger.Info("import follow: the slot is still held by an earlier stream; trying again", "slot", imp.Slot, "err", err)
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
	}
}

// slotDropped reports whether err ended the stream because its slot was
// dropped: its WAL sender was terminated (57P01, as import finish's drop
// of the slot does first) or the slot does not exist (42704), and the
// legacy database has no slot of that name within slotDropWait (the drop
// follows the WAL sender's end).
func (im *Importer) slotDropped(ctx context.Context, imp *Import, err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || (pe.Code != "57P01" && pe.Code != "42704") {
		return false
	}
	legacy, cerr := connect(ctx, imp.LegacyDSN)
	if cerr != nil {
		return false
	}
	defer legacy.Close(context.Background())
	for t0 := time.Now(); ; {
		var exists bool
		if qerr := legacy.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, imp.Slot).Scan(&exists); qerr != nil {
			return false
		}
		if !exists {
			return true
		}
		if time.Since(t0) > slotDropWait || sleepCtx(ctx, 100*time.Millisecond) != nil {
			return false
		}
	}
}

// slotDropWait is how long a stream whose WAL sender was terminated looks
// for its slot to be dropped (import finish) before it reports the error.
const slotDropWait = 5 * time.Second

// slotBusyWait is how long Follow waits for a slot held by another stream
// (an earlier run's WAL sender that has not noticed its end yet).
const slotBusyWait = 30 * time.Second

// isObjectInUse reports a 55006 (object_in_use), e.g. a replication slot
// that another WAL sender reads.
func isObjectInUse(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "55006"
}
