package move

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The fence is a lease. The mover that fences a shard holds two leases of
// Config.FenceLease (5s by default) and renews both every FenceLease/5:
//
//   - in the catalog, a row of pgtenant.fence_leases; when it lapses (by the
//     catalog's clock) any router releases the shard back to its source
//     (catalog.ReleaseExpiredFences) and the move waits for --resume. The flip
//     consumes the lease in its transaction, so a mover whose lease lapsed can
//     no longer flip;
//   - on the source node, a row of pgtenant_move.fence read by a statement
//     trigger (pgtenant_fence) that the fence puts on every table of the shard:
//     while the row's expires_at is in the future (by the node's clock) every
//     INSERT, UPDATE, DELETE, TRUNCATE and COPY FROM on the shard's tables
//     fails with SQLSTATE 25006, whoever sends it (superusers included),
//     so nothing written behind the routers' backs is missed by the move.
//     When the mover dies, the row lapses on its own and the source is
//     writable again: nobody has to undo anything. After the flip the row
//     is set to 'infinity' until the source schema is retired (renamed, with
//     write privileges revoked, or dropped).
//
// The source lease is a fifth shorter (4s of 5s) and renewed just after the
// catalog lease, only when that succeeded (the catalog lease is also renewed
// right after the source lease is first taken), so with the two clocks in
// step (NTP, within a second) the source is writable again before routers
// release the shard to it. A source lease that lapsed while the mover was
// alive stops the flip (renewSourceLease right before it fails).

// DefaultFenceLease is the fence lease when Config.FenceLease is zero. A
// router holds a fenced shard's transactions for up to its hold timeout (10s
// by default): a 5s lease plus the router's 1s check and a map reload gives
// the shard back within that hold, so clients of a shard whose mover died
// wait instead of failing, and a mover has 4 missed renewals (4s of catalog
// or source stall) before it loses the fence.
const DefaultFenceLease = 5 * time.Second

// guardDDL creates the fence table and the trigger function on a node. It is
// run with markerDDL (same schema) and is idempotent; concurrent creators race
// on the catalogs' unique indexes, which ensureMarker retries.
const guardDDL = `
CREATE TABLE IF NOT EXISTS pgtenant_move.fence (schema_name text PRIMARY KEY, move_id bigint NOT NULL,
  expires_at timestamptz NOT NULL);
DO $do$ BEGIN
IF to_regprocedure('pgtenant_move.fence_guard()') IS NULL THEN
CREATE FUNCTION pgtenant_move.fence_guard() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF EXISTS (SELECT 1 FROM pgtenant_move.fence WHERE schema_name = TG_TABLE_SCHEMA AND expires_at > clock_timestamp()) THEN
    RAISE EXCEPTION 'shard schema % is fenced by a shard move: writes on this node are refused', TG_TABLE_SCHEMA
      USING ERRCODE = '25006',
        HINT = 'write through the pgtenant router; if the mover died the fence lapses within seconds, then the shard takes writes here again';
  END IF;
  RETURN NULL;
END $f$;
END IF;
END $do$`

// guardTrigger is the name of the fence trigger on each table of a fenced shard.
const guardTrigger = "pgtenant_fence"

// queueGuard queues, inside the fence transaction on the source (which holds
// the shard's table locks), the fence trigger on every table and the source
// lease.
func (m *Mover) queueGuard(queue func(label, sql string, args ...any), mv *moveRun, names []string) {
	for _, n := range names {
		queue("put the fence trigger on the shard's tables", fmt.Sprintf("CREATE OR REPLACE TRIGGER %s BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgtenant_move.fence_guard()",
			ident(guardTrigger), ident(mv.Schema, n)))
	}
	// clock_timestamp(), not now(): the fence transaction began before the
	// pause (preLock), maybe seconds ago.
	queue("take the source lease", `INSERT INTO pgtenant_move.fence (schema_name, move_id, expires_at) VALUES ($1, $2, clock_timestamp() + $3::bigint * interval '1 millisecond')
		ON CONFLICT (schema_name) DO UPDATE SET move_id = excluded.move_id, expires_at = excluded.expires_at`,
		mv.Schema, mv.ID, m.sourceLease().Milliseconds())
}

// holdGuard makes the source lease permanent (after the flip: the source copy
// is retired and must take no more writes).
func holdGuard(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	if _, err := src.Exec(ctx, `UPDATE pgtenant_move.fence SET expires_at = 'infinity' WHERE schema_name = $1 AND move_id = $2`,
		mv.Schema, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("keep the retired source write-protected: %w", err)
	}
	return nil
}

// disarmGuard removes the source lease and the fence triggers (abort).
// Dropping a trigger needs a brief ACCESS EXCLUSIVE lock: with a busy table it
// gives up after lock_timeout and leaves the trigger, which is inert without
// its lease row.
func (m *Mover) disarmGuard(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	if _, err := src.Exec(ctx, `DELETE FROM pgtenant_move.fence WHERE schema_name = $1 AND move_id = $2`, mv.Schema, mv.ID); err != nil {
		if isUndefined(err) {
			return nil
		}
		return fmt.Errorf("release the source lease: %w", err)
	}
	rows, err := src.Query(ctx, `SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname = $2 ORDER BY 1`, mv.Schema, guardTrigger)
	if err != nil {
		return fmt.Errorf("list fence triggers: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list fence triggers: %w", err)
	}
	for _, n := range names {
		err := pgx.BeginFunc(ctx, src, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, m.cfg.LockTimeout.Milliseconds())); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `DROP TRIGGER IF EXISTS `+ident(guardTrigger)+` ON `+ident(mv.Schema, n))
			return err
		})
		if err != nil {
			m.log.Warn("drop fence trigger; it stays, inert", "move", mv.ID, "shard", mv.Shard, "table", n, "err", err)
		}
	}
	return nil
}

// errLeaseLost is the cause of a fence cancelled because its lease lapsed.
var errLeaseLost = errors.New("the fence lease lapsed (not renewed in time); the shard may have been released to its source")

// leaseRenewer renews a move's catalog lease and, once armed, its source
// lease, every FenceLease/5 until stopped. When a renewal finds the lease
// gone it cancels the fence with errLeaseLost.
type leaseRenewer struct {
	stop   context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	src    *pgx.Conn // its own connection to the source; nil until armed
	failed error
}

// renewLeases starts renewing. cancel ends the fence when the lease is lost.
func (m *Mover) renewLeases(ctx context.Context, mv *moveRun, cancel context.CancelCauseFunc) *leaseRenewer {
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r := &leaseRenewer{stop: stop, done: make(chan struct{})}
	every := m.cfg.FenceLease / 5
	go func() {
		defer close(r.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				return
			case <-t.C:
			}
			if err := m.renewOnce(rctx, mv, r, every); err != nil {
				if rctx.Err() != nil {
					return
				}
				m.log.Warn("fence lease renewal failed", "move", mv.ID, "shard", mv.Shard, "err", err)
				if errors.Is(err, errLeaseLost) {
					r.mu.Lock()
					r.failed = err
					r.mu.Unlock()
					cancel(err)
					return
				}
			}
		}
	}()
	return r
}

// renewSourceLease renews the move's lease on the source through src; a
// lapsed lease is errLeaseLost.
func (m *Mover) renewSourceLease(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	tag, err := src.Exec(ctx, `UPDATE pgtenant_move.fence SET expires_at = now() + $3::bigint * interval '1 millisecond'
		WHERE schema_name = $1 AND move_id = $2 AND expires_at > now()`, mv.Schema, mv.ID, m.sourceLease().Milliseconds())
	if err != nil {
		return fmt.Errorf("renew the source lease: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("source: %w", errLeaseLost)
	}
	return nil
}

// sourceLease is the source side's lease: FenceLease less one renewal
// interval, so that with the two clocks in step the source takes writes
// again before routers release the shard to it.
func (m *Mover) sourceLease() time.Duration { return m.cfg.FenceLease - m.cfg.FenceLease/5 }

func (m *Mover) renewOnce(ctx context.Context, mv *moveRun, r *leaseRenewer, every time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, max(every, time.Second))
	defer cancel()
	// The catalog first: the source lease is only extended while the
	// catalog's is, so it never outlives it.
	if err := m.renewCatalogLease(ctx, mv); err != nil {
		return err
	}
	r.mu.Lock()
	src := r.src
	r.mu.Unlock()
	if src != nil {
		return m.renewSourceLease(ctx, src, mv)
	}
	return nil
}

// renewCatalogLease renews the move's lease in the catalog; a lapsed (or
// released) lease is errLeaseLost.
func (m *Mover) renewCatalogLease(ctx context.Context, mv *moveRun) error {
	tag, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.fence_leases SET expires_at = now() + $3::bigint * interval '1 millisecond'
		WHERE shard = $1 AND move_id = $2 AND expires_at > now()`, mv.Shard, mv.ID, m.cfg.FenceLease.Milliseconds())
	if err != nil {
		return fmt.Errorf("renew the catalog lease: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("catalog: %w", errLeaseLost)
	}
	return nil
}

// arm starts renewing the source lease too, on its own connection.
func (r *leaseRenewer) arm(src *pgx.Conn) {
	r.mu.Lock()
	r.src = src
	r.mu.Unlock()
}

// close stops renewing (and waits for a renewal in flight).
func (r *leaseRenewer) close() {
	r.stop()
	<-r.done
}

// revokeRetired takes INSERT, UPDATE, DELETE and TRUNCATE on the schema's
// tables from every non-superuser role (and PUBLIC) in tx: the transaction
// that retires (renames) the source schema after a flip, so a writer that
// bypassed the routers fails with 42501 instead of writing to the old copy,
// and the copy method's fence transaction (a rollback gives them back).
// tx is a pgx.Tx or a *pgx.Conn in a transaction.
func revokeRetired(ctx context.Context, tx interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}, schema string) error {
	rows, err := tx.Query(ctx, `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
		CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END,
		string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		CROSS JOIN LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
		LEFT JOIN pg_roles r ON r.oid = a.grantee
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
		  AND (a.grantee = 0 OR NOT r.rolsuper)
		GROUP BY 1, 2 ORDER BY 1, 2`, schema)
	if err != nil {
		return fmt.Errorf("read grants: %w", err)
	}
	grants, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Grant, error) {
		var g Grant
		err := r.Scan(&g.Table, &g.Role, &g.Privs)
		return g, err
	})
	if err != nil {
		return fmt.Errorf("read grants: %w", err)
	}
	for _, g := range grants {
		if _, err := tx.Exec(ctx, `REVOKE `+g.Privs+` ON `+g.Table+` FROM `+g.Role); err != nil {
			return fmt.Errorf("revoke writes on %s from %s: %w", g.Table, g.Role, err)
		}
	}
	return nil
}
