package importer

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// The import's change stream applies each node's part of a batch in a
// goroutine of its own (a nodeApplier), so that a node waits only for its
// own earlier transactions, never for a slower node, and a cutover's marker
// waits only for the node of its shard.
//
// Why nothing is lost, applied twice or reordered:
//   - Each node gets its parts in stream order through one queue and
//     applies them in order, in target transactions that record the
//     node's position (the end LSN of the last transaction applied there),
//     as before: a restarted stream starts at the lowest position of the
//     nodes and each node skips what it has (applier.route).
//   - The stream confirms to the legacy database's slot only the end of a
//     batch whose parts, and every earlier batch's, are durable on their
//     nodes (pipeline.Durable): the slot keeps every change a node could
//     still lose, wherever the other nodes are.
//   - A part without a cutover marker commits with synchronous_commit =
//     off: visible at once, durable once the node's WAL is flushed past its
//     commit. Until then it is not confirmed to the slot, so a crash of the
//     node that loses it makes the restarted stream apply it again (the
//     node's position, lost with it, is older).
//   - The flip never rests on a change the node could lose (the stream
//     skips a shard's legacy changes once it is cut over, so it would not
//     apply it again). A round commits with synchronous_commit = on
//     (flushing every round before it) when it changes a shard that is
//     fenced (the routes read for its batch say so), or one whose marker
//     it carries, or when its shard was fenced since the batch before and
//     the node's WAL is not known to be flushed past the shard's last
//     change (nodeApplier.changed, nodeApplier.flushed; a flush request
//     alone flushes the node): so, while the routers hold the shard and the
//     legacy database commits the marker, the node flushes what it applied
//     of it; such a round's notification names the node's flushed position
//     after its commit (stream.ApplyOptions.Notify: not the insert one,
//     which other sessions' WAL not flushed yet may lie below). A round
//     with a marker otherwise commits without waiting for
//     its flush, and its notification names the node's position after the
//     last round that changed the shard: alone when the node is known
//     flushed that far (the cutover flips at once), else with the node's
//     position after the marker's round before it, and the cutover flips
//     only once it flushed the node that far. That position is also where
//     the shard's reverse stream starts (import rollback): past every
//     change the stream applied to the shard, and durable.
//   - Reads of a node's applied rows (a child's parent looked up, a
//     verify's hold) wait for the node's queue (nodeApplier.mu, drain).

// nodeQueue is how many batch parts may wait for one node before the
// router waits too (the stream's memory stays bounded when a node stalls).
const nodeQueue = 64

// maxRoundChanges bounds the changes of queued parts a node applies in one
// target transaction.
const maxRoundChanges = 10000

// roundGap is the least time between the starts of a node's rounds
// without a marker.
const roundGap = 5 * time.Millisecond

// flushCheck is how long a node with parts committed but not yet known to
// be flushed waits for another part before it flushes its WAL.
const flushCheck = 100 * time.Millisecond

// markerChannel is the channel a node notifies when the stream applied a
// cutover marker of shard (payload: the marker's seq and the node's WAL
// position after the commit).
func markerChannel(shard int) string { return "pgtenant_import_marker_" + strconv.Itoa(shard) }

// pipeline applies batches' parts per node and tracks which batches are
// durable on every node.
type pipeline struct {
	nodes map[string]*nodeApplier
	fail  context.CancelCauseFunc
	wg    sync.WaitGroup

	// trace is told when a marker's round committed (Importer.SetTrace).
	trace func(shard int, step string, at time.Time)

	mu      sync.Mutex
	open    []*pending // batches not durable on every node, in stream order
	durable stream.LSN
}

// pending is a batch the pipeline took: its end and how many of its node
// parts are not durable yet.
type pending struct {
	end  stream.LSN
	left int
}

// nodeApplier applies one node's parts in order.
type nodeApplier struct {
	name string
	p    *pipeline
	ta   *stream.TableApplier
	in   chan nodeWork
	// mu is held while ta.Conn is in use (a round, a flush check, a lookup).
	mu sync.Mutex
	// unflushed are the rounds committed without waiting for the flush.
	unflushed []unflushedRound
	// changed is, per shard schema, the node's position after the last
	// round that changed it in this run (for a round committed with its
	// flush: the flushed position read after it); start is the node's
	// position when the run started, for the shards not changed since.
	changed map[string]stream.LSN
	start   stream.LSN
	// flushed is how far the node's WAL is known to be flushed.
	flushed stream.LSN
}

// changedAt is the node's position after the last round that changed
// schema (the run's start when none did).
func (n *nodeApplier) changedAt(schema string) stream.LSN {
	if at, ok := n.changed[schema]; ok {
		return at
	}
	return n.start
}

// markPart is the shard of a cutover marker in a node's part.
type markPart struct {
	shard  int
	schema string
}

// nodeWork is one batch's part for a node, a drain request, or a flush
// request.
type nodeWork struct {
	txns    []*stream.Txn
	batch   *pending
	notify  [][2]string   // cutover markers' notifications
	marks   []markPart    // the shard of each of notify's markers
	drained chan struct{} // a drain request: closed once every part before it is applied
	// fenced are the schemas of the shards fenced when the part was
	// routed: a round that changes one commits with its flush.
	fenced map[string]bool
	// flushFor are the schemas of shards fenced since the batch before:
	// the node flushes what it applied of them.
	flushFor []string
}

type unflushedRound struct {
	lsn     stream.LSN // the node's WAL position after the commit
	batches []*pending
}

// newPipeline returns a pipeline over the nodes' appliers; fail ends the
// stream with the error of a node.
func newPipeline(nodes map[string]*stream.TableApplier, fail context.CancelCauseFunc) *pipeline {
	p := &pipeline{nodes: map[string]*nodeApplier{}, fail: fail}
	for name, ta := range nodes {
		p.nodes[name] = &nodeApplier{name: name, p: p, ta: ta, in: make(chan nodeWork, nodeQueue)}
	}
	return p
}

// start runs a goroutine per node until ctx ends; wait waits for them.
func (p *pipeline) start(ctx context.Context) {
	for _, n := range p.nodes {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := n.run(ctx); err != nil && ctx.Err() == nil {
				p.fail(fmt.Errorf("apply to node %s: %w", n.name, err))
			}
		}()
	}
}

func (p *pipeline) wait() { p.wg.Wait() }

// Durable returns the end of the last batch durable on every node, with
// every batch before it.
func (p *pipeline) Durable() stream.LSN {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.durable
}

// take records a batch ending at end with parts for nodes nodes.
func (p *pipeline) take(end stream.LSN, nodes int) *pending {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := &pending{end: end, left: nodes}
	p.open = append(p.open, b)
	p.advance()
	return b
}

// done records that one part of each of bs is durable.
func (p *pipeline) done(bs []*pending) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range bs {
		b.left--
	}
	p.advance()
}

func (p *pipeline) advance() {
	i := 0
	for i < len(p.open) && p.open[i].left <= 0 {
		p.durable = p.open[i].end
		i++
	}
	if i > 0 {
		p.open = append(p.open[:0], p.open[i:]...)
	}
}

// send queues w for node, waiting while its queue is full.
func (p *pipeline) send(ctx context.Context, node string, w nodeWork) error {
	n := p.nodes[node]
	if n == nil {
		return fmt.Errorf("no connection to node %s", node)
	}
	select {
	case n.in <- w:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// drain waits until every node applied the parts queued so far (visible;
// not necessarily flushed).
func (p *pipeline) drain(ctx context.Context) error {
	var chs []chan struct{}
	for name := range p.nodes {
		ch := make(chan struct{})
		if err := p.send(ctx, name, nodeWork{drained: ch}); err != nil {
			return err
		}
		chs = append(chs, ch)
	}
	for _, ch := range chs {
		select {
		case <-ch:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// run applies the node's parts until ctx ends: a round takes every part
// queued (up to maxRoundChanges) into one target transaction. A round of
// ordinary parts starts at most every roundGap (nothing reads a shard's rows
// on its node before its cutover, so they need not be there sooner, and the
// node commits fewer, larger transactions); a part with a marker, or a
// drain request, starts its round at once.
func (n *nodeApplier) run(ctx context.Context) error {
	n.mu.Lock()
	var start, flushed string
	err := n.ta.Conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text`).Scan(&start, &flushed)
	n.mu.Unlock()
	if err != nil {
		return fmt.Errorf("read the node's WAL position: %w", err)
	}
	if n.start, err = stream.ParseLSN(start); err != nil {
		return err
	}
	if n.flushed, err = stream.ParseLSN(flushed); err != nil {
		return err
	}
	n.changed = map[string]stream.LSN{}
	flush := time.NewTimer(flushCheck)
	flush.Stop()
	defer flush.Stop()
	gap := time.NewTimer(roundGap)
	gap.Stop()
	defer gap.Stop()
	var next time.Time // when the next ordinary round may start
	for {
		var round []nodeWork
		select {
		case <-ctx.Done():
			return nil
		case w := <-n.in:
			round = append(round, w)
		case <-flush.C:
			if err := n.checkFlush(ctx); err != nil {
				return err
			}
			continue
		}
		size, urgent := round[0].size(), round[0].urgent()
		if d := time.Until(next); d > 0 && !urgent {
			gap.Reset(d)
		wait:
			for size < maxRoundChanges {
				select {
				case <-ctx.Done():
					return nil
				case <-gap.C:
					break wait
				case w := <-n.in:
					round = append(round, w)
					size += w.size()
					if w.urgent() {
						break wait
					}
				}
			}
			gap.Stop()
		}
	more:
		for size < maxRoundChanges {
			select {
			case w := <-n.in:
				round = append(round, w)
				size += w.size()
			default:
				break more
			}
		}
		start := time.Now()
		if err := n.apply(ctx, round); err != nil {
			return err
		}
		next = start.Add(roundGap)
		if len(n.unflushed) > 0 {
			flush.Reset(flushCheck)
		} else {
			flush.Stop()
		}
	}
}

func (w nodeWork) urgent() bool { return len(w.notify) > 0 || w.drained != nil || len(w.flushFor) > 0 }

func (w nodeWork) size() int {
	n := 0
	for _, t := range w.txns {
		n += len(t.Changes)
	}
	return n
}

// apply applies a round's parts in one target transaction (see the top of
// this file for when it commits with its flush and what its markers'
// notifications say), flushes the node for the shards newly fenced when
// the round had nothing to apply, and then answers its drain requests.
func (n *nodeApplier) apply(ctx context.Context, round []nodeWork) error {
	var txns []*stream.Txn
	var batches []*pending
	var notify [][2]string
	var marks []markPart
	var flushFor []string
	for _, w := range round {
		txns = append(txns, w.txns...)
		if w.batch != nil {
			batches = append(batches, w.batch)
		}
		notify = append(notify, w.notify...)
		marks = append(marks, w.marks...)
		flushFor = append(flushFor, w.flushFor...)
	}
	fenced := round[len(round)-1].fenced // the latest routes'
	// needFlush: a newly fenced shard's changes are not known durable.
	needFlush := false
	for _, s := range flushFor {
		needFlush = needFlush || n.changedAt(s) > n.flushed
	}
	if len(txns) > 0 {
		schemas := changedSchemas(txns)
		sync := needFlush
		for _, m := range marks {
			sync = sync || schemas[m.schema]
		}
		for s := range schemas {
			sync = sync || fenced[s]
		}
		if !sync && len(notify) > 0 { // each names where its shard last changed
			notify = append([][2]string(nil), notify...)
			for i, m := range marks {
				if at := n.changedAt(m.schema); at <= n.flushed {
					notify[i][1] = strings.Replace(notify[i][1], "%s", at.String(), 1) // durable there
				} else {
					notify[i][1] += " " + at.String()
				}
			}
		}
		n.mu.Lock()
		res, err := n.ta.ApplyWith(ctx, txns, stream.ApplyOptions{Async: !sync, Notify: notify})
		n.mu.Unlock()
		if err != nil {
			return err
		}
		if n.p.trace != nil {
			for _, m := range marks {
				n.p.trace(m.shard, StepMarkerApplied, time.Now())
			}
		}
		if sync { // flushed: so is every round committed before it
			for s := range schemas {
				n.changed[s] = res.FlushLSN // past the round's commit, and durable
			}
			n.allFlushed(res.FlushLSN)
			n.p.done(batches)
		} else {
			for s := range schemas {
				n.changed[s] = res.CommitLSN
			}
			n.unflushed = append(n.unflushed, unflushedRound{lsn: res.CommitLSN, batches: batches})
			n.flushedTo(res.FlushLSN)
		}
	} else {
		if len(batches) > 0 {
			n.p.done(batches) // parts without changes (cannot happen today)
		}
		if needFlush {
			if err := n.flush(ctx); err != nil {
				return err
			}
		}
	}
	for _, w := range round {
		if w.drained != nil {
			close(w.drained)
		}
	}
	return nil
}

// changedSchemas returns the shard schemas txns change (the marker
// table's aside).
func changedSchemas(txns []*stream.Txn) map[string]bool {
	out := map[string]bool{}
	var last *stream.Relation
	for _, t := range txns {
		for i := range t.Changes {
			if r := t.Changes[i].Rel; r != nil && r != last {
				last = r
				if r.Schema != "pgtenant_stream" {
					out[r.Schema] = true
				}
			}
		}
	}
	return out
}

// checkFlush makes the rounds committed without their flush durable when
// nothing else came for flushCheck. (The WAL writer flushes async commits by
// itself, but a round's recorded position may lie past its commit record,
// on WAL nothing else might flush soon.)
func (n *nodeApplier) checkFlush(ctx context.Context) error {
	if len(n.unflushed) == 0 {
		return nil
	}
	return n.flush(ctx)
}

// flush flushes the node's WAL (stream.Flush): every round committed so
// far is durable.
func (n *nodeApplier) flush(ctx context.Context) error {
	n.mu.Lock()
	flushed, err := stream.Flush(ctx, n.ta.Conn)
	n.mu.Unlock()
	if err != nil {
		return err // the pipeline names the node
	}
	n.allFlushed(flushed)
	return nil
}

// allFlushed marks every round committed so far durable, the node's WAL
// flushed to lsn.
func (n *nodeApplier) allFlushed(lsn stream.LSN) {
	for _, u := range n.unflushed {
		n.p.done(u.batches)
	}
	n.unflushed = n.unflushed[:0]
	n.flushed = max(n.flushed, lsn)
}

// flushedTo marks the rounds committed up to lsn durable.
func (n *nodeApplier) flushedTo(lsn stream.LSN) {
	n.flushed = max(n.flushed, lsn)
	i := 0
	for i < len(n.unflushed) && n.unflushed[i].lsn <= lsn {
		n.p.done(n.unflushed[i].batches)
		i++
	}
	if i > 0 {
		n.unflushed = append(n.unflushed[:0], n.unflushed[i:]...)
	}
}

// asyncApplier is the Follow's applier: batches go to the pipeline, and
// the stream confirms what is durable on every node.
type asyncApplier struct{ *applier }

// Durable implements stream.AsyncApplier.
func (a asyncApplier) Durable() stream.LSN { return a.pipe.Durable() }
