package importer

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Id ranges across the legacy database and the nodes.
//
// While an import runs, the legacy database hands out ids to the tenants
// not cut over yet, and each cut-over shard's node hands out ids to the
// shard's tenants from the shard's own sequences. Both kinds of rows meet
// only when a shard is rolled back (its node's rows written back to the
// legacy tables), and there the same id twice would fail the write back
// (23505). So at cutover a shard sequence is not set just past its legacy
// sequence but to a block of ids of its own. With a block size G (a power
// of ten: 10^12 for bigint sequences, smaller for integer ones, see
// idBlockSize) and S the catalog's shard count, the id space is cut into
// spans of (S+1)·G ids: in each span the first block is left to the legacy
// database, and block s+1 is shard s's. At cutover shard s gets its block
// in the span E that starts at or after the legacy sequence's value: ids
// E + (s+1)·G + 1 … E + (s+2)·G. So
//   - the legacy database reaches a cut-over shard's block only after
//     handing out G more ids (10^12 for bigint),
//   - two shards' blocks never overlap (the same span gives them different
//     blocks), so several shards roll back without meeting each other's
//     ids, and a shard cut over again gets a block in a later span;
//   - at rollback the legacy sequences are set to the end of the span of
//     the shard's block, past every block of that span, so the ids the
//     legacy database hands out from then on meet no id a node handed out
//     in it (even those handed out while the rollback runs, before its
//     fence), and the next span starts with the legacy database's block.
//
// A sequence whose type leaves no room for such spans (a smallint, a
// sequence counting down, or a legacy sequence already in the top half of
// its range) gets no block: its shard sequence is set just past the legacy
// one, as before, and a rollback that meets an id the legacy database holds
// stops with ErrIDCollision before the shard leaves its node: nothing is
// lost, nothing skipped.

// idBlockMax is the largest block size (bigint sequences).
const idBlockMax = int64(1_000_000_000_000)

// idBlock is one shard sequence's block size and span; size 0: no block.
type idBlock struct{ size, span int64 }

// idBlockSize is the block size for a sequence with largest value max and
// increment inc and a catalog of shards shards: the largest power of ten up
// to idBlockMax whose span (shards+1 blocks) fits four times in max; none
// when there is no such power or the sequence counts down.
func idBlockSize(max, inc int64, shards int) idBlock {
	if inc <= 0 || shards <= 0 || max <= 0 {
		return idBlock{}
	}
	for g := idBlockMax; g >= 10; g /= 10 {
		if span := g * int64(shards+1); span/int64(shards+1) == g && span <= max/4 {
			return idBlock{size: g, span: span}
		}
	}
	return idBlock{}
}

// IDBlockOf says whose id block holds id for a shard sequence with largest
// value max and increment inc in a catalog of shards shards (the blocks a
// cutover gives shard sequences, above): the shard (-1 for the legacy
// database's block, and when such a sequence gets no blocks) and the last
// id of that block. A tenant move between two shards keeps each shard's
// sequence in its own block with it (internal/tenantops).
func IDBlockOf(max, inc int64, shards int, id int64) (shard int, end int64) {
	b := idBlockSize(max, inc, shards)
	if b.size == 0 || id <= 0 {
		return -1, 0
	}
	// Shard s's ids in the span starting at e: e+(s+1)·size+1 … e+(s+2)·size.
	e := (id - 1) / b.span * b.span
	k := (id - 1 - e) / b.size
	return int(k) - 1, e + (k+1)*b.size
}

// nodeStart is the value a shard sequence is set to at cutover for a legacy
// sequence at last: the start of shard's block in the first span that
// starts at or after last; last itself without a block (or without room
// for its span below max).
func (b idBlock) nodeStart(last, max int64, shard int) int64 {
	if b.size == 0 || last < 0 || last > max-2*b.span {
		return last
	}
	e := (last + b.span - 1) / b.span * b.span
	return e + int64(shard+1)*b.size
}

// legacyFloor is the value a legacy sequence is set to at rollback for a
// shard sequence at last: the end of the span last is in (past every
// block of it); last itself without a block (or past max).
func (b idBlock) legacyFloor(last, max int64) int64 {
	if b.size == 0 || last < 0 || last/b.span >= max/b.span {
		return last
	}
	return (last/b.span + 1) * b.span
}

// idBlocks reads, for each shard sequence of pairs, its largest value and
// increment on the node, and returns its block with the catalog's shard
// count, and its largest value.
func (im *Importer) idBlocks(ctx context.Context, node *pgx.Conn, pairs []seqPair) ([]idBlock, []int64, error) {
	if len(pairs) == 0 {
		return nil, nil, nil
	}
	shards, err := im.cat.ShardCount(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read the shard count: %w", err)
	}
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.shard
	}
	rows, err := node.Query(ctx, `SELECT s.seqmax, s.seqincrement FROM unnest($1::text[]) WITH ORDINALITY AS u(n, i)
		JOIN pg_sequence s ON s.seqrelid = u.n::regclass ORDER BY u.i`, names)
	if err != nil {
		return nil, nil, fmt.Errorf("read the shard's sequences: %w", err)
	}
	blocks := make([]idBlock, 0, len(pairs))
	maxes := make([]int64, 0, len(pairs))
	var mx, inc int64
	if _, err := pgx.ForEachRow(rows, []any{&mx, &inc}, func() error {
		blocks = append(blocks, idBlockSize(mx, inc, shards))
		maxes = append(maxes, mx)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("read the shard's sequences: %w", err)
	}
	if len(blocks) != len(pairs) {
		return nil, nil, fmt.Errorf("read the shard's sequences: %d of %d found", len(blocks), len(pairs))
	}
	return blocks, maxes, nil
}

// idPlan maps sequence values between the legacy database and one shard's
// node (see the comment at the top of idblocks.go).
type idPlan struct {
	shard  int
	blocks []idBlock
	maxes  []int64
}

// nodeStarts maps the legacy sequences' values (one per pair) to the
// values their shard sequences are set to at cutover.
func (p *idPlan) nodeStarts(last []int64) []int64 {
	if p == nil {
		return last
	}
	out := make([]int64, len(last))
	for i, v := range last {
		out[i] = p.blocks[i].nodeStart(v, p.maxes[i], p.shard)
	}
	return out
}

// legacyFloors maps the shard sequences' values (one per pair) to the
// values their legacy sequences are set to at rollback.
func (p *idPlan) legacyFloors(last []int64) []int64 {
	if p == nil {
		return last
	}
	out := make([]int64, len(last))
	for i, v := range last {
		out[i] = p.blocks[i].legacyFloor(v, p.maxes[i])
	}
	return out
}

// idPlan returns the id plan of shard s for pairs.
func (im *Importer) idPlan(ctx context.Context, node *pgx.Conn, shard int, pairs []seqPair) (*idPlan, error) {
	blocks, maxes, err := im.idBlocks(ctx, node, pairs)
	if err != nil {
		return nil, err
	}
	return &idPlan{shard: shard, blocks: blocks, maxes: maxes}, nil
}
