package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Mismatch is one tenant's table whose rows differ between the legacy
// database and the shard.
type Mismatch struct {
	Shard                         int
	Tenant, Table                 string
	LegacyRows, ShardRows         int64
	LegacyChecksum, ShardChecksum string
}

// VerifyReport is what Verify compared.
type VerifyReport struct {
	Shards, Tenants, Tables int
	// CutOver counts the shards not compared because they are cut over.
	CutOver    int
	Rows       int64
	Mismatches []Mismatch
	// Consistent: both sides were read at one point of the legacy
	// database's history, LSN (the import was streaming).
	Consistent bool
	LSN        string
	// Unimported are the legacy tables neither in the import nor excluded
	// (not compared); Rejects the changes the stream rejected, not
	// resolved. Either makes the report not OK.
	Unimported []string
	Rejects    []Reject
}

// OK reports whether every tenant's rows matched, every legacy table is in
// the import (or excluded) and no rejected change is left.
func (r *VerifyReport) OK() bool {
	return len(r.Mismatches) == 0 && len(r.Unimported) == 0 && len(r.Rejects) == 0
}

// VerifyOptions tune VerifyWith.
type VerifyOptions struct {
	// Shards to compare; nil means every copied shard not cut over.
	Shards []int
	// Timeout bounds each wait for the verify's point: its temporary
	// slot's creation on the legacy database, then (after the legacy side
	// is read) the change stream's hold there; 0 means 2 minutes.
	Timeout time.Duration
}

// ErrVerifyNoStream: the change stream did not reach the verify's point.
var ErrVerifyNoStream = coded("55000", "the change stream did not reach the verify's point in time; is `pgtenant import start` (or its follow) running? `pgtenant import status` shows its lag")

// ErrVerifyHoldLapsed: the stream stopped holding before the shards were read.
var ErrVerifyHoldLapsed = coded("57014", "the change stream stopped holding at the verify's point before the shards were read (the hold lasts at most 2 minutes); verify fewer shards at once (--shard)")

// ErrVerifyPointGivenUp: the change stream stopped waiting for the
// verify's point before the verify recorded it, on every attempt.
var ErrVerifyPointGivenUp = coded("55000", "the change stream stopped waiting for the verify's point before the verify recorded it (creating the verify's slot on the legacy database took longer than the stream waits, on every attempt: long transactions on the legacy database's server delay it); end them (pg_stat_activity, backend_xid), then run import verify again")

// ErrVerifySlotWait: the verify's temporary slot was not created in time.
var ErrVerifySlotWait = coded("55P03", "the verify's temporary slot on the legacy database was not created in time: a logical slot waits until every transaction that holds a transaction id on the legacy database's server (in any database) has ended")

// Verify compares the given shards (nil: every copied shard not cut over);
// see VerifyWith.
func (im *Importer) Verify(ctx context.Context, shards []int) (*VerifyReport, error) {
	return im.VerifyWith(ctx, VerifyOptions{Shards: shards})
}

// Marker rows of the verify protocol (pgtenant_import.marker.shard).
const (
	markerCatchUpEnd    = -1 // Importer.catchUp's end of stream
	markerVerifyRequest = -2 // a verify's request: the applier learns its point
	markerVerifyEnd     = -3 // a transaction past the verify's point
)

// verifyTable on the legacy database (not published) is where a verify
// and the applier agree on the point, the hold and the release.
const verifyTable = markerSchema + ".verify"

// VerifyWith compares, for every tenant of the shards and every tenant
// table, the row count and a checksum of the rows (md5 of their text, in
// order) between the legacy database and the shard's schema on its node.
//
// While the change stream runs (the import is streaming), both sides are
// read at one consistent point, with writes flowing:
//
//  1. The verify commits, on the legacy database, a row in
//     pgtenant_import.verify and a request marker (published) naming it.
//  2. It creates a temporary logical slot: its exported snapshot S holds
//     exactly the transactions that end at or before the slot's consistent
//     point L (the rule the copy's snapshots and the stream already share),
//     and records L in the verify row.
//  3. It commits an end marker (a transaction past L, so the stream has
//     one to stop before) and reads the legacy side at S.
//  4. The applier, on the request marker (which ends before L: it was
//     committed before the slot), reads L from the verify row, applies
//     every transaction ending at or before L, and before the first one
//     past L records in the verify row that it holds, then waits (at most
//     2 minutes) for the release.
//  5. The verify waits for the hold, reads each node's shard tables (they
//     now hold exactly the changes up to L: only the stream writes the
//     shards of a shard not cut over), then releases the applier. A hold
//     that lapsed before the release fails the verify (ErrVerifyHoldLapsed).
//
// No side waits for the other without a bound. The applier waits for L at
// most holdPointWait (the slot's creation waits for every transaction with
// an xid on the legacy database's server); when it gives the request up, it
// marks the row released, only while L is not recorded, so that the verify,
// which records L only in a row not released, learns it at once and starts
// again with a new request (verifyAttempts in all; then
// ErrVerifyPointGivenUp). The slot's creation and the wait for the hold
// are bounded by opts.Timeout each (ErrVerifySlotWait naming the
// transactions the slot waits for; ErrVerifyNoStream). A verify that fails after the hold
// releases it, so the stream goes on at once.
//
// A difference found this way is not a write in flight: it is a real one.
// Without a stream (the import is copying or copied), the two sides are
// read as they are: a shard holds its copy's snapshot, and a difference
// may be a change the stream will bring. Shards cut over are not compared
// (the legacy database no longer gets their writes).
func (im *Importer) VerifyWith(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Minute
	}
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("verify: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	rules, _, err := im.streamRules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	// Tables not in the import are named, not compared (unimported.go);
	// the rejected changes are listed (reject.go).
	unimported, err := im.unimported(ctx, legacy, imp)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	rules = slices.DeleteFunc(rules, func(t tables.Table) bool { return slices.Contains(unimported, t.Name) })
	rejects, err := im.Rejects(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	legacySums, shardSums := sumsFunc(sums), sumsFunc(sums)
	if ap, err := im.apartmentOf(ctx); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	} else if ap != nil { // a schema per tenant: rows compared without the tenant column
		if err := ap.loadColumns(ctx, legacy, rules); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		legacySums, shardSums = ap.legacySums, ap.shardSums
	}
	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	want := map[int]bool{}
	for _, s := range opts.Shards {
		want[s] = true
	}
	tenants, err := im.tenantsByShard(ctx)
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{Tables: len(rules), Unimported: unimported, Rejects: rejects}
	var todo []ShardProgress
	for _, s := range all {
		if opts.Shards != nil && !want[s.Shard] || s.State != ShardCopied {
			if s.State == ShardCutover && (opts.Shards == nil || want[s.Shard]) {
				rep.CutOver++
			}
			continue
		}
		rep.Shards++
		if len(tenants[s.Shard]) > 0 {
			todo = append(todo, s)
		}
	}
	var ids []string
	for _, s := range todo {
		ids = append(ids, tenants[s.Shard]...)
	}

	// The legacy side (at the verify's point while streaming).
	var release func(context.Context) error
	defer func() { // a verify that fails after the hold does not keep the stream held
		if release != nil {
			_ = release(context.WithoutCancel(ctx))
		}
	}()
	var l map[[2]string]sum
	if imp.State == StateStreaming && len(todo) > 0 {
		rep.Consistent = true
		var lsn string
		if imp.Method == MethodTrigger {
			l, lsn, release, err = im.legacyAtHold(ctx, imp, legacy, rules, ids, opts.Timeout, legacySums)
		} else {
			l, lsn, release, err = im.legacyAtPoint(ctx, imp, legacy, rules, ids, opts.Timeout, legacySums)
		}
		if err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
		rep.LSN = lsn
	} else if l, err = legacySums(ctx, legacy, "", imp.LegacySchema, rules, ids); err != nil {
		return nil, fmt.Errorf("verify on the legacy database: %w", err)
	}

	// The shards' side.
	targets := map[string]*pgx.Conn{}
	defer func() {
		for _, c := range targets {
			c.Close(context.Background())
		}
	}()
	for _, s := range todo {
		dst := targets[s.Node]
		if dst == nil {
			if dst, err = connect(ctx, s.NodeDSN); err != nil {
				return nil, fmt.Errorf("verify: connect to node %s: %w", s.Node, err)
			}
			targets[s.Node] = dst
		}
		r, err := shardSums(ctx, dst, "", s.Schema, rules, tenants[s.Shard])
		if err != nil {
			return nil, fmt.Errorf("verify shard %d on node %s: %w", s.Shard, s.Node, err)
		}
		rep.Tenants += len(tenants[s.Shard])
		keys := map[[2]string]bool{}
		for _, id := range tenants[s.Shard] {
			for _, t := range rules {
				if t.Kind != tables.KindShared {
					keys[[2]string{id, t.Name}] = true
				}
			}
		}
		for k := range keys {
			a, b := l[k], r[k]
			rep.Rows += a.rows
			if a != b {
				rep.Mismatches = append(rep.Mismatches, Mismatch{Shard: s.Shard, Tenant: k[0], Table: k[1],
					LegacyRows: a.rows, ShardRows: b.rows, LegacyChecksum: a.sum, ShardChecksum: b.sum})
			}
		}
	}
	if release != nil {
		rel := release
		release = nil
		if err := rel(ctx); err != nil {
			return nil, fmt.Errorf("verify: %w", err)
		}
	}
	sort.Slice(rep.Mismatches, func(i, j int) bool {
		a, b := rep.Mismatches[i], rep.Mismatches[j]
		if a.Shard != b.Shard {
			return a.Shard < b.Shard
		}
		if a.Tenant != b.Tenant {
			return a.Tenant < b.Tenant
		}
		return a.Table < b.Table
	})
	im.cat.RecordOperation(ctx, "import verify", map[string]any{"shards": rep.Shards, "tenants": rep.Tenants, "rows": rep.Rows,
		"mismatches": len(rep.Mismatches), "consistent": rep.Consistent, "lsn": rep.LSN}, nil)
	return rep, nil
}

// verifyAttempts is how many requests a verify makes when the change
// stream gives its point up before the verify recorded it.
const verifyAttempts = 2

// errPointGivenUp: the applier gave this request's point up (verifyAt).
var errPointGivenUp = errors.New("the change stream gave the verify's point up")

// legacyAtPoint runs steps 1 to 3 of the verify protocol (see VerifyWith)
// and waits for step 4: it returns the legacy side's sums at the verify's
// point, the point, and the release of the applier's hold. A request
// whose point the applier gave up is made again (verifyAttempts in all).
func (im *Importer) legacyAtPoint(ctx context.Context, imp *Import, legacy *pgx.Conn, rules []tables.Table, ids []string, timeout time.Duration, sums sumsFunc) (map[[2]string]sum, string, func(context.Context) error, error) {
	if _, err := legacy.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+verifyTable+` (seq bigint PRIMARY KEY, lsn pg_lsn, held_at timestamptz, released_at timestamptz,
		created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, "", nil, fmt.Errorf("create %s on the legacy database: %w", verifyTable, err)
	}
	for attempt := 1; ; attempt++ {
		l, lsn, release, err := im.verifyAt(ctx, imp, legacy, rules, ids, timeout, sums)
		if !errors.Is(err, errPointGivenUp) {
			return l, lsn, release, err
		}
		if attempt == verifyAttempts {
			return nil, "", nil, ErrVerifyPointGivenUp
		}
		im.logger.Warn("import verify: the change stream gave the verify's point up before it was recorded (the verify's slot took long to create); asking again", "attempt", attempt)
	}
}

// verifyAt makes one verify request (steps 1 to 3), its slot's creation
// and then the wait for its hold each bounded by timeout; errPointGivenUp
// when the applier gave its point up.
func (im *Importer) verifyAt(ctx context.Context, imp *Import, legacy *pgx.Conn, rules []tables.Table, ids []string, timeout time.Duration, sums sumsFunc) (map[[2]string]sum, string, func(context.Context) error, error) {
	seq := rand.Int64N(1 << 62)
	marker := func(shard int) error {
		return pgx.BeginFunc(ctx, legacy, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
				return err
			}
			if shard == markerVerifyRequest {
				if _, err := tx.Exec(ctx, `INSERT INTO `+verifyTable+` (seq) VALUES ($1)`, seq); err != nil {
					return err
				}
			}
			_, err := tx.Exec(ctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, shard, seq)
			return err
		})
	}
	cleanup := func() {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = legacy.Exec(bg, `UPDATE `+verifyTable+` SET released_at = now() WHERE seq = $1 AND released_at IS NULL`, seq)
		// The row stays (released) a day: an applier that finds no row
		// waits for it to become visible (learnHold).
		_, _ = legacy.Exec(bg, `DELETE FROM `+verifyTable+` WHERE created_at < now() - interval '1 day'`)
	}
	if err := marker(markerVerifyRequest); err != nil {
		return nil, "", nil, fmt.Errorf("write the verify request on the legacy database: %w", err)
	}
	snap, err := createVerifySlot(ctx, imp.LegacyDSN, fmt.Sprintf("pgtenant_verify_%d", seq%1e9), time.Now().Add(timeout))
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	defer snap.Close(context.Background())
	// Only in a row the applier has not given up (it marks it released).
	tag, err := legacy.Exec(ctx, `UPDATE `+verifyTable+` SET lsn = $2::pg_lsn WHERE seq = $1 AND released_at IS NULL`, seq, snap.ConsistentLSN)
	if err != nil {
		cleanup()
		return nil, "", nil, fmt.Errorf("record the verify's point: %w", err)
	}
	if tag.RowsAffected() != 1 {
		cleanup()
		return nil, "", nil, errPointGivenUp
	}
	if err := marker(markerVerifyEnd); err != nil {
		cleanup()
		return nil, "", nil, fmt.Errorf("write the verify's end marker on the legacy database: %w", err)
	}
	reader, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	l, err := sums(ctx, reader, snap.Snapshot, imp.LegacySchema, rules, ids)
	reader.Close(context.Background())
	if err != nil {
		cleanup()
		return nil, "", nil, fmt.Errorf("read the legacy database at the verify's point: %w", err)
	}
	snap.Close(context.Background())
	deadline := time.Now().Add(timeout)
	for {
		var held, released bool
		if err := legacy.QueryRow(ctx, `SELECT held_at IS NOT NULL, released_at IS NOT NULL FROM `+verifyTable+` WHERE seq = $1`, seq).Scan(&held, &released); err != nil {
			cleanup()
			return nil, "", nil, fmt.Errorf("wait for the change stream: %w", err)
		}
		if held {
			break
		}
		if released { // not by this verify: the applier gave the point up
			cleanup()
			return nil, "", nil, errPointGivenUp
		}
		if time.Now().After(deadline) {
			cleanup()
			return nil, "", nil, ErrVerifyNoStream
		}
		select {
		case <-ctx.Done():
			cleanup()
			return nil, "", nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	release := func(ctx context.Context) error {
		defer cleanup()
		tag, err := legacy.Exec(ctx, `UPDATE `+verifyTable+` SET released_at = now() WHERE seq = $1 AND released_at IS NULL`, seq)
		if err != nil {
			return fmt.Errorf("release the change stream: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return ErrVerifyHoldLapsed
		}
		return nil
	}
	return l, snap.ConsistentLSN, release, nil
}

// createVerifySlot creates a verify's temporary slot on the legacy
// database, waiting at most until deadline: a logical slot waits until
// every transaction holding a transaction id on the server has ended.
// Past the deadline, ErrVerifySlotWait names the oldest of them.
func createVerifySlot(ctx context.Context, dsn, name string, deadline time.Time) (*slot, error) {
	sctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	started := time.Now()
	snap, err := createSlot(sctx, dsn, name, true)
	if err == nil || ctx.Err() != nil || sctx.Err() == nil {
		return snap, err
	}
	return nil, fmt.Errorf("%w; waited %s for: %s; end them (or wait for them), then run import verify again",
		ErrVerifySlotWait, time.Since(started).Round(time.Second), oldTransactions(ctx, dsn, started))
}

// oldTransactions describes the sessions of dsn's server whose transaction
// holds a transaction id and started before since (at most 5, oldest
// first), as far as the role may see them.
func oldTransactions(ctx context.Context, dsn string, since time.Time) string {
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	conn, err := connect(qctx, dsn)
	if err != nil {
		return "transactions not listed (" + err.Error() + ")"
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(qctx, `SELECT format('pid %s (database %s, user %s, application %L, %s, transaction started %s ago)', pid, datname, usename,
			application_name, state, date_trunc('second', now() - xact_start))
		FROM pg_catalog.pg_stat_activity
		WHERE backend_xid IS NOT NULL AND xact_start < now() - $1 * interval '1 second' AND pid <> pg_backend_pid()
		ORDER BY xact_start LIMIT 5`, time.Since(since).Seconds())
	if err != nil {
		return "transactions not listed (" + err.Error() + ")"
	}
	list, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "transactions not listed (" + err.Error() + ")"
	}
	if len(list) == 0 {
		return "transactions this role may not see (pg_stat_activity shows other roles' sessions to pg_read_all_stats)"
	}
	return strings.Join(list, "; ")
}

// verifyHold is the point of a verify request the applier holds at.
type verifyHold struct {
	seq   int64
	until stream.LSN
}

// holdTimeout bounds an applier's hold at a verify's point.
const holdTimeout = 2 * time.Minute

// holdPointWait bounds an applier's wait for a verify's point after its
// request (the verify's slot creation: milliseconds, unless transactions
// with an xid run long on the legacy database's server). A variable for
// the tests.
var holdPointWait = holdTimeout

// verifyRequest finds the first transaction of txns carrying a verify
// request marker: its index and the request's seq (-1 when none).
func verifyRequest(txns []*stream.Txn) (int, int64) {
	for i, t := range txns {
		for _, c := range t.Changes {
			if c.Kind != stream.Insert || c.Rel.Schema != markerSchema || c.Rel.Table != markerTable {
				continue
			}
			sh, _ := value(c.New, column(c.Rel, "shard"))
			if sh != strconv.Itoa(markerVerifyRequest) {
				continue
			}
			v, _ := value(c.New, column(c.Rel, "seq"))
			if seq, err := strconv.ParseInt(v, 10, 64); err == nil {
				return i, seq
			}
		}
	}
	return -1, 0
}

// learnHold reads the point of verify request seq (step 4 of the
// protocol): the verify records it right after creating its slot. A
// request whose verify is gone (its row released) is ignored; one whose
// point did not come within holdPointWait is given up: marked released
// while its point is not recorded, so that the verify learns it and asks
// again (VerifyWith). A missing row is waited for too: it commits with the
// request's marker, but the stream may deliver a commit before the legacy
// database shows it to other sessions (the walsender sends it once it is
// flushed; the committing session makes it visible after that), and a
// verify keeps its row a day.
func (a *applier) learnHold(ctx context.Context, seq int64) error {
	if a.legacyConn == nil {
		imp, err := a.im.load(ctx)
		if err != nil {
			return err
		}
		if a.legacyConn, err = connect(ctx, imp.LegacyDSN); err != nil {
			return fmt.Errorf("verify hold: connect to the legacy database: %w", err)
		}
	}
	deadline := time.Now().Add(holdPointWait)
	for {
		var lsn *string
		var released bool
		err := a.legacyConn.QueryRow(ctx, `SELECT lsn::text, released_at IS NOT NULL FROM `+verifyTable+` WHERE seq = $1`, seq).Scan(&lsn, &released)
		missing := errors.Is(err, pgx.ErrNoRows)
		if err != nil && !missing {
			return fmt.Errorf("verify hold: read the verify's point: %w", err)
		}
		if released {
			return a.closeLegacy()
		}
		if lsn != nil {
			until, err := stream.ParseLSN(*lsn)
			if err != nil {
				return err
			}
			a.hold = &verifyHold{seq: seq, until: until}
			return nil
		}
		if time.Now().After(deadline) && missing {
			a.log.Warn("import: a verify request's row never showed on the legacy database; going on", "seq", seq, "waited", holdPointWait)
			return a.closeLegacy()
		}
		if time.Now().After(deadline) {
			tag, err := a.legacyConn.Exec(ctx, `UPDATE `+verifyTable+` SET released_at = now() WHERE seq = $1 AND lsn IS NULL AND released_at IS NULL`, seq)
			if err != nil {
				return fmt.Errorf("verify hold: give a verify's point up: %w", err)
			}
			if tag.RowsAffected() == 1 {
				a.log.Warn("import: a verify request did not get its point in time; given up (the verify asks again)", "seq", seq, "waited", holdPointWait)
				return a.closeLegacy()
			}
			continue // recorded meanwhile
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// holdAt records that every change up to the hold's point is applied and
// waits for the verify's release (at most holdTimeout).
func (a *applier) holdAt(ctx context.Context) error {
	h := a.hold
	a.hold = nil
	defer a.closeLegacy()
	if _, err := a.legacyConn.Exec(ctx, `UPDATE `+verifyTable+` SET held_at = now() WHERE seq = $1`, h.seq); err != nil {
		return fmt.Errorf("verify hold: %w", err)
	}
	deadline := time.Now().Add(holdTimeout)
	for {
		var released bool
		err := a.legacyConn.QueryRow(ctx, `SELECT released_at IS NOT NULL FROM `+verifyTable+` WHERE seq = $1`, h.seq).Scan(&released)
		if errors.Is(err, pgx.ErrNoRows) || err == nil && released {
			return nil
		}
		if err != nil {
			return fmt.Errorf("verify hold: %w", err)
		}
		if time.Now().After(deadline) {
			// The verify learns it lapsed when it releases.
			_, err := a.legacyConn.Exec(ctx, `UPDATE `+verifyTable+` SET released_at = now() WHERE seq = $1 AND released_at IS NULL`, h.seq)
			a.log.Warn("import: a verify held the change stream too long; going on", "seq", h.seq)
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (a *applier) closeLegacy() error {
	if a.legacyConn != nil {
		a.legacyConn.Close(context.Background())
		a.legacyConn = nil
	}
	return nil
}

// sumsFunc reads row counts and checksums per tenant and table (sums,
// or a schema-per-tenant import's legacySums and shardSums).
type sumsFunc func(ctx context.Context, conn *pgx.Conn, snapshot, schema string, rules []tables.Table, tenants []string) (map[[2]string]sum, error)

type sum struct {
	rows int64
	sum  string
}

// sums reads, for tenants, each table's row count and checksum per tenant
// in schema, in one REPEATABLE READ transaction (at snapshot when given).
func sums(ctx context.Context, conn *pgx.Conn, snapshot, schema string, rules []tables.Table, tenants []string) (map[[2]string]sum, error) {
	byName := map[string]tables.Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	out := map[[2]string]sum{}
	err := inSnapshot(ctx, conn, snapshot, func(tx pgx.Tx) error {
		for _, t := range rules {
			var tenantExpr, join string
			switch t.Kind {
			case tables.KindTenant:
				tenantExpr = "pgtenant_t." + pgx.Identifier{t.TenantColumn}.Sanitize() + "::text"
			case tables.KindChild:
				p := byName[t.Parent]
				tenantExpr = "pgtenant_p." + pgx.Identifier{p.TenantColumn}.Sanitize() + "::text"
				join = fmt.Sprintf(" JOIN %s pgtenant_p ON pgtenant_p.%s = pgtenant_t.%s", pgx.Identifier{schema, p.Name}.Sanitize(),
					pgx.Identifier{t.ParentColumn}.Sanitize(), pgx.Identifier{t.ParentKey}.Sanitize())
			default:
				continue
			}
			q := fmt.Sprintf(`SELECT %s, count(*), md5(string_agg(pgtenant_t::text, E'\n' ORDER BY pgtenant_t::text COLLATE "C"))
				FROM %s pgtenant_t%s WHERE %[1]s = ANY ($1) GROUP BY 1`, tenantExpr, pgx.Identifier{schema, t.Name}.Sanitize(), join)
			if err := collectSums(ctx, tx, out, t.Name, q, tenants); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// inSnapshot runs f in one REPEATABLE READ, read-only transaction on conn,
// at snapshot (an exported snapshot's name) when given.
func inSnapshot(ctx context.Context, conn *pgx.Conn, snapshot string, f func(pgx.Tx) error) error {
	return pgx.BeginTxFunc(ctx, conn, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if snapshot != "" {
			if _, err := tx.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+strings.ReplaceAll(snapshot, "'", "''")+`'`); err != nil {
				return fmt.Errorf("import the verify's snapshot: %w", err)
			}
		}
		return f(tx)
	})
}

// collectSums runs q (rows of tenant, count, checksum) on tx and adds its
// rows to out as table's.
func collectSums(ctx context.Context, tx pgx.Tx, out map[[2]string]sum, table, q string, args ...any) error {
	rows, err := tx.Query(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("table %s: %w", table, err)
	}
	var tenant string
	var s sum
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &s.rows, &s.sum}, func() error {
		out[[2]string{tenant, table}] = s
		return nil
	}); err != nil {
		return fmt.Errorf("table %s: %w", table, err)
	}
	return nil
}

// String describes a mismatch in one line.
func (m Mismatch) String() string {
	return fmt.Sprintf("shard %d tenant %q table %s: legacy %d rows (%s), shard %d rows (%s)", m.Shard, m.Tenant, m.Table,
		m.LegacyRows, short(m.LegacyChecksum), m.ShardRows, short(m.ShardChecksum))
}

func short(s string) string {
	if s == "" {
		return "-"
	}
	return strings.TrimSpace(s)[:8]
}
