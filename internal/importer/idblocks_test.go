package importer

import (
	"math"
	"testing"
)

// TestIDBlocks: the shards' id blocks at cutover are past the legacy
// sequence by at least a block, apart from each other (also across
// cutovers at different legacy values), and a rollback sets the legacy
// sequence past every block of its span.
func TestIDBlocks(t *testing.T) {
	for _, tc := range []struct {
		name   string
		max    int64
		shards int
		size   int64
	}{
		{"bigint", math.MaxInt64, 256, 1_000_000_000_000},
		{"bigint, 65536 shards", math.MaxInt64, 65536, 1_000_000_000_000},
		{"integer", math.MaxInt32, 64, 1_000_000},
		{"integer, 4 shards", math.MaxInt32, 4, 100_000_000},
		{"smallint", math.MaxInt16, 64, 100},
		{"smallint, 1024 shards", math.MaxInt16, 1024, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := idBlockSize(tc.max, 1, tc.shards)
			if got, want := b.size, tc.size; got != want {
				t.Fatalf("block size %d, want %d", got, want)
			}
			if b.size == 0 {
				if got := b.nodeStart(42, tc.max, 3); got != 42 {
					t.Errorf("without a block: node start %d, want 42", got)
				}
				return
			}
			type block struct{ lo, hi int64 }
			var blocks []block
			for _, last := range []int64{0, 1, 41, b.span - 1, b.span, b.span + 1, 3*b.span - b.size} {
				if last > tc.max-2*b.span {
					continue // no room: below
				}
				for _, shard := range []int{0, 1, tc.shards - 1} {
					start := b.nodeStart(last, tc.max, shard)
					if start-last < b.size {
						t.Errorf("legacy at %d, shard %d: block at %d, less than a block past", last, shard, start)
					}
					nb := block{start + 1, start + b.size}
					for _, o := range blocks {
						if nb.lo <= o.hi && o.lo <= nb.hi && nb != o {
							t.Errorf("legacy at %d, shard %d: block %v overlaps %v", last, shard, nb, o)
						}
					}
					blocks = append(blocks, nb)
					for _, used := range []int64{start, start + 1, start + b.size} {
						floor := b.legacyFloor(used, tc.max)
						for _, o := range blocks {
							if o.hi > floor && o.lo <= floor+b.size {
								t.Errorf("rollback of shard %d at %d: legacy set to %d, within a block's reach %v", shard, used, floor, o)
							}
						}
						if floor < used {
							t.Errorf("rollback at %d: legacy set to %d", used, floor)
						}
					}
				}
			}
			if got := b.nodeStart(tc.max-b.span, tc.max, 1); got != tc.max-b.span {
				t.Errorf("near the top of the range: node start %d, want the legacy value", got)
			}
		})
	}
	if b := idBlockSize(math.MaxInt64, -1, 64); b.size != 0 {
		t.Errorf("a descending sequence gets a block of %d", b.size)
	}
}

// TestIDBlockOf: the ids of the block a cutover gives shard s belong to s,
// from the first to the last; the ids around it to its neighbours.
func TestIDBlockOf(t *testing.T) {
	const shards = 4
	b := idBlockSize(math.MaxInt64, 1, shards)
	for _, last := range []int64{0, 41, b.span - 1, b.span + 1} {
		for s := 0; s < shards; s++ {
			start := b.nodeStart(last, math.MaxInt64, s) // the sequence's value after the cutover
			for _, id := range []int64{start + 1, start + 2, start + b.size} {
				if got, end := IDBlockOf(math.MaxInt64, 1, shards, id); got != s || end != start+b.size {
					t.Errorf("legacy at %d: id %d of shard %d's block: owner %d, block end %d; want %d, %d", last, id, s, got, end, s, start+b.size)
				}
			}
			if got, _ := IDBlockOf(math.MaxInt64, 1, shards, start); got != s-1 {
				t.Errorf("id %d, just below shard %d's block: owner %d, want %d", start, s, got, s-1)
			}
		}
	}
	if got, _ := IDBlockOf(math.MaxInt64, 1, shards, 1000); got != -1 {
		t.Errorf("a legacy id: owner %d, want -1", got)
	}
	if got, _ := IDBlockOf(math.MaxInt16, 1, 1024, 7); got != -1 {
		t.Errorf("a sequence without blocks: owner %d, want -1", got)
	}
}
