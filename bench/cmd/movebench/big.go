package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// oldCopy switches the session-8 copy changes off: the initial copy and the
// comparison run with the server's backend_flush_after, the copy without
// FREEZE (as before session 8).
func oldCopy(c *move.Config) { c.CopyFlushAfter, c.CopyWithoutFreeze = -1, true }

// runBig loads -big-mb into shard 5 (on n2) and moves it -big-moves times
// back and forth under -big-clients clients; with -copy-ab the moves take
// turns with the copy as before session 8 (first) and as now.
func runBig(ctx context.Context, o options, log *slog.Logger, e *env, nodes map[string]*localpg.Cluster) ([]row, error) {
	const big = 5             // on n2
	bigRows := o.bigMB * 1000 // ~1 KB per row (row ~1,030 bytes with its index entries)
	t0 := time.Now()
	s := pgx.Identifier{placement.SchemaName(big)}.Sanitize()
	if err := exec(ctx, nodes["n2"].DSN("bench"), fmt.Sprintf(`
		INSERT INTO %[1]s.accounts (tenant, name) SELECT 'bulk', 'account ' || i FROM generate_series(1, 1000) i;
		INSERT INTO %[1]s.items (account_id, n, payload) SELECT 1 + i %% 1000, i, repeat(md5(i::text), 30) FROM generate_series(1, %[2]d) i;
		ANALYZE %[1]s.accounts, %[1]s.items;`, s, bigRows)); err != nil {
		return nil, err
	}
	if o.bigSettle {
		if err := exec(ctx, nodes["n2"].DSN("bench"), fmt.Sprintf(`VACUUM %[1]s.accounts, %[1]s.items`, s)); err != nil {
			return nil, err
		}
	}
	var size int64
	conn, err := pgx.Connect(ctx, nodes["n2"].DSN("bench"))
	if err != nil {
		return nil, err
	}
	conn.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`,
		placement.SchemaName(big)).Scan(&size)
	conn.Close(ctx)
	loaded := time.Since(t0)
	l := e.startLoad(o.bigClients, big, o.think)
	defer l.stop()
	var rows []row
	where, other := "n2", map[string]string{"n1": "n2", "n2": "n1"}
	for i := 0; i < max(o.bigMoves, 1); i++ {
		old := o.copyAB && i%2 == 0
		if o.bigSettle {
			for _, n := range []string{"n1", "n2"} {
				if err := exec(ctx, nodes[n].DSN("bench"), `CHECKPOINT`); err != nil {
					return rows, err
				}
			}
		}
		time.Sleep(time.Second)
		stopTL := func() {}
		if e.tl.on() {
			stopTL = e.tl.start(ctx)
		}
		m0 := time.Now()
		res, err := e.mover(log, nil, func(c *move.Config) {
			c.VerifyChunk, c.VerifyPace = o.verifyChunk, o.verifyPace
			c.CopyFlushAfter, c.CopyWithoutFreeze = o.copyFlushAfter, o.copyNoFreeze
			if old {
				oldCopy(c)
			}
		}).Move(ctx, big, other[where], move.Options{SkipVerify: !o.bigVerify, DropSource: true})
		m1 := time.Now()
		stopTL()
		variant := "copy now"
		if old {
			variant = "copy as before"
		}
		if e.tl.on() {
			sn := e.shardNodes(ctx)
			sn[big] = where + "→" + other[where]
			e.tl.report(fmt.Sprintf("large shard, %d MB, move %d, %s", size>>20, i+1, variant), l, big, m0, m1, sn)
		}
		if err != nil {
			return rows, fmt.Errorf("big move: %w", err)
		}
		where = other[where]
		mm, mp, _ := l.stats(big, true, m0, m1)
		om, op, _ := l.stats(big, false, m0, m1)
		verify := "off"
		if o.bigVerify {
			verify = fmt.Sprintf("after flip (%v, %.1fs)", res.Verified, res.VerifyTime.Seconds())
		}
		rows = append(rows, row{name: fmt.Sprintf("large shard, %d MB, %d rows, move %d", size>>20, bigRows+1010, i+1), load: fmt.Sprintf("%d clients, %s think", o.bigClients, o.think),
			verify: verify, pause: res.Pause, maxMoving: mm, maxOther: om, p99Moving: mp, p99Other: op, total: res.Duration,
			note: fmt.Sprintf("%s; %.1f MB/s, %.0f rows/s over the whole move (loaded in %s)", variant,
				float64(size)/1e6/res.Duration.Seconds(), float64(bigRows)/res.Duration.Seconds(), loaded.Round(time.Second))})
		if o.perMove {
			fmt.Printf("large shard, move %d (%s): pause %.1f ms, max txn moving shard %.1f ms, other shards %.1f ms, move %.1f s\n", i+1, variant,
				ms(res.Pause), ms(mm), ms(om), res.Duration.Seconds())
		}
	}
	time.Sleep(500 * time.Millisecond)
	l.stop()
	_, _, errs := l.stats(big, true, time.Time{}, time.Now())
	_, _, errs2 := l.stats(big, false, time.Time{}, time.Now())
	led, err := l.ledger(ctx, e)
	if err != nil {
		return rows, err
	}
	rows[len(rows)-1].note += fmt.Sprintf("; %d client errors; %s", errs+errs2, led)
	return rows, nil
}
