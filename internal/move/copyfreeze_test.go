package move

import (
	"context"
	"testing"
)

// TestCopyArrivesFrozen: the logical method's initial copy fills each
// table with COPY … FREEZE in the transaction that empties it, so on the
// target every copied page is all-visible at once (the ANALYZE after the
// copy counts them in pg_class.relallvisible) and no later read writes the
// pages again to set hint bits; CopyWithoutFreeze copies as before.
func TestCopyArrivesFrozen(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		cfg    Config
		frozen bool
	}{
		{"default", Config{}, true},
		{"without freeze", Config{CopyWithoutFreeze: true, CopyFlushAfter: -1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			fillShard(t, e, 20000)
			m := testMover(t, e, tc.cfg)
			if _, err := m.Move(ctx, testShard, "n2", Options{}); err != nil {
				t.Fatalf("move: %v", err)
			}
			for _, table := range []string{"accounts", "items", "events"} {
				// Pages holding rows: COPY on PostgreSQL 17 and later extends a
				// table by several empty pages at once, which stay not all-visible.
				var used, visible int64
				if err := e.dst.QueryRow(ctx, `SELECT (SELECT count(DISTINCT (ctid::text::point)[0]) FROM `+ident(testSchema, table)+`),
					relallvisible FROM pg_class WHERE oid = to_regclass($1)`, testSchema+"."+table).Scan(&used, &visible); err != nil {
					t.Fatalf("%s: %v", table, err)
				}
				if used == 0 {
					t.Fatalf("%s: no rows on the target", table)
				}
				if got, want := visible >= used, tc.frozen; got != want {
					t.Errorf("%s on the target: %d all-visible pages, %d pages hold rows; want all of them all-visible: %v", table, visible, used, want)
				}
			}
			if got, want := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`), int64(20000); got != want {
				t.Errorf("items on the target: %d rows, want %d", got, want)
			}
		})
	}
}

// TestBulkSettings: the copy's and the comparison's sessions ask the
// server to write their dirty pages every CopyFlushAfter kB (256 by
// default); a negative value leaves the server's setting.
func TestBulkSettings(t *testing.T) {
	for _, tc := range []struct {
		flushAfter int
		want       string
	}{{0, "256kB"}, {2048, "2048kB"}, {-1, ""}} {
		m := New(Config{CopyFlushAfter: tc.flushAfter})
		if got := m.bulkSettings()["backend_flush_after"]; got != tc.want {
			t.Errorf("CopyFlushAfter %d: backend_flush_after %q, want %q", tc.flushAfter, got, tc.want)
		}
	}
}
