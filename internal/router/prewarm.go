package router

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Pre-warming the target of a move. When the fence lifts, the transactions
// it held run on the target node all at once; on backends the router's pool
// opened only then, each paid the start of a server process (tens of ms of
// CPU) and, at the first write, the loading of PL/pgSQL for the move's
// capture trigger (as much again), one after another on a busy machine. So
// as soon as a map names the node a shard is moving to (placement.Shard.
// Target: the mover announces it before the fence, and the fence's own map
// names it too), the router readies that node's pool, per role, for as many
// clients as it saw use the shard: the distinct sessions in flight on the
// shard's gate, sampled every millisecond over prewarmWindow (a client that
// runs a transaction less often than that is unlikely to be held by a pause
// of tens of ms), or, when the first map naming the target is the fence's,
// those in flight at the fence. Each connection is primed with primeSQL.
// This runs in the background: SetMap, and so the fence's acknowledgement,
// never waits for it, and a target that cannot be reached is only logged
// (the held transactions then connect at the release, as before).

// primeSQL loads PL/pgSQL into a backend (an empty DO block goes through the
// language's inline handler).
const primeSQL = `DO $pgtenant_prime$BEGIN END$pgtenant_prime$`

// prewarmTimeout bounds one pre-warming (opening and priming connections).
const prewarmTimeout = 10 * time.Second

// prewarmWindow is how long the shard's clients are counted before the
// target is warmed for them.
const prewarmWindow = 100 * time.Millisecond

// prewarmer is the server's pre-warming state.
type prewarmer struct {
	mu sync.Mutex
	// shards holds the last warming of each shard with a target: a map
	// re-applied warms nothing again; the fence's map (state fenced) warms
	// once more, for at least the clients counted before.
	shards map[int]*shardWarm
	wg     sync.WaitGroup
	ctx    context.Context
	stop   context.CancelFunc
	// off: pre-warming is off (Config.NoPrewarm, SetPrewarm).
	off atomic.Bool
}

// SetPrewarm turns pre-warming on or off while the server runs (it starts
// as Config.NoPrewarm says); warmings already running go on.
func (s *Server) SetPrewarm(on bool) { s.warm.off.Store(!on) }

// shardWarm is one warming of a shard's target.
type shardWarm struct {
	key string // target and state it is for
	// demand is the clients counted per role (under prewarmer.mu).
	demand map[string]int
	done   chan struct{} // closed when it has ended
}

// prewarm starts warming the target of every shard of m that has one it
// was not warmed for yet (SetMap, under setMu, after m was stored).
func (s *Server) prewarm(m *placement.Map) {
	pw := &s.warm
	pw.mu.Lock()
	defer pw.mu.Unlock()
	if s.warm.off.Load() || s.closed.Load() {
		return
	}
	for _, sh := range m.Shards {
		key := ""
		if sh.Target != "" && sh.Target != sh.Node {
			key = sh.Target + "\x00" + sh.State
		}
		prev := pw.shards[sh.ID]
		if prev == nil && key == "" || prev != nil && prev.key == key {
			continue
		}
		if key == "" {
			delete(pw.shards, sh.ID)
			continue
		}
		src, ok := m.Nodes[sh.Node]
		dst, ok2 := m.Nodes[sh.Target]
		if !ok || !ok2 {
			continue
		}
		if pw.shards == nil {
			pw.shards = map[int]*shardWarm{}
		}
		sw := &shardWarm{key: key, done: make(chan struct{})}
		if prev != nil && strings.HasPrefix(prev.key, sh.Target+"\x00") {
			sw.demand = prev.demand // the same move: its count so far
		} else {
			prev = nil
		}
		pw.shards[sh.ID] = sw
		pw.wg.Add(1)
		go func() {
			defer pw.wg.Done()
			defer close(sw.done)
			if prev != nil {
				select { // one warming of a shard at a time
				case <-prev.done:
				case <-pw.ctx.Done():
					return
				}
			}
			s.warmTarget(pw.ctx, sh, src, dst, sw)
		}()
	}
}

// stopPrewarm cancels the pre-warmings running and waits for them (Serve,
// before it closes the pools; prewarm starts no more once closed is set).
func (s *Server) stopPrewarm() {
	pw := &s.warm
	pw.mu.Lock() // a prewarm that saw closed unset has added to wg
	pw.mu.Unlock()
	pw.stop()
	pw.wg.Wait()
}

// shardClients counts, per role, the distinct sessions with a transaction in
// flight on gate g: sampled every millisecond for window, or once if window
// is zero.
func shardClients(ctx context.Context, g *gate, window time.Duration) map[string]int {
	seen := map[*session]bool{}
	out := map[string]int{}
	sample := func() {
		g.mu.Lock()
		for ss := range g.inflight {
			if !seen[ss] {
				seen[ss] = true
				out[ss.access.Role]++
			}
		}
		g.mu.Unlock()
	}
	sample()
	if window <= 0 {
		return out
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	end := time.NewTimer(window)
	defer end.Stop()
	for {
		select {
		case <-t.C:
			sample()
		case <-end.C:
			return out
		case <-ctx.Done():
			return out
		}
	}
}

// warmTarget readies the pools of dst for shard sh's clients on src.
func (s *Server) warmTarget(ctx context.Context, sh placement.Shard, src, dst placement.Node, sw *shardWarm) {
	g := s.gatesFor(sh.ID + 1)[sh.ID]
	window := prewarmWindow
	if sh.State == placement.StateFenced {
		window = 0 // held clients are not in flight: count those finishing
	}
	counted := shardClients(ctx, g, window)
	s.warm.mu.Lock()
	demand := maps.Clone(sw.demand)
	if demand == nil {
		demand = map[string]int{}
	}
	for role, n := range counted {
		demand[role] = max(demand[role], n)
	}
	sw.demand = demand
	s.warm.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, prewarmTimeout)
	defer cancel()
	roles := slices.Sorted(maps.Keys(demand))
	for _, role := range roles {
		n := demand[role]
		if s.closed.Load() || ctx.Err() != nil {
			return
		}
		t0 := time.Now()
		res, err := s.poolFor(dst, role).Warm(ctx, n, primeSQL)
		if err != nil {
			s.log.Warn("pre-warm the target of a move", "shard", sh.ID, "node", dst.Name, "state", sh.State,
				"wanted", n, "ready", res.Ready, "opened", res.Opened, "err", err)
			continue
		}
		s.log.Info("target pre-warmed", "shard", sh.ID, "node", dst.Name, "from", src.Name, "state", sh.State, "role", role,
			"wanted", n, "ready", res.Ready, "opened", res.Opened, "primed", res.Primed, "took", time.Since(t0))
	}
}
