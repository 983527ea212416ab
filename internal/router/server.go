package router

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/sqlscan"
	"github.com/pgtenant/pgtenant/internal/usage"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// Server is the router. Create it with New, install a map with SetMap, and
// run it with Run (or Open then Serve).
type Server struct {
	cfg Config
	log *slog.Logger
	m   *Metrics

	// testHookCancel, when set (by tests), runs as a cancel request is
	// about to be sent to a backend.
	testHookCancel func()
	// testCancelTimeout, when set (by tests), replaces the 5 s a cancel
	// request may take.
	testCancelTimeout time.Duration

	mp    atomic.Pointer[placement.Map]
	setMu sync.Mutex // serialises SetMap

	poolsMu sync.RWMutex
	pools   map[string]*pool.Pool
	// poolsGen counts the pools taken out of pools (closed or replaced),
	// under poolsMu: a session's cached pool is good while it is unchanged
	// (see session.poolFor).
	poolsGen atomic.Uint64

	gatesMu sync.Mutex
	gates   atomic.Pointer[[]*gate]
	// gateLeft is signalled (capacity 1) when a transaction leaves a
	// fenced shard's gate: SetMap acknowledges a fence as soon as the last
	// one has left, not at its next look.
	gateLeft chan struct{}

	sessMu   sync.Mutex
	sessions map[uint32]*session
	nextID   atomic.Uint64

	stmtMu  sync.RWMutex
	stmtIDs map[string]string
	// stmtGen counts the schema changes the router saw (schemaChanged).
	stmtGen atomic.Uint64
	// schemaTags maps a schema to the short tag in the names of statements
	// prepared on backends for it (see session.serverStmt).
	tagMu      sync.RWMutex
	schemaTags map[string]string
	stmtSeq    atomic.Uint64

	keyMu sync.Mutex
	keys  map[string]wire.SCRAMKeys

	params atomic.Pointer[map[string]string]

	// budget bounds the memory held for large client messages (nil: none).
	budget *wire.Budget
	// tlsUsers are the users refused without TLS (Config.RequireTLSUsers).
	tlsUsers map[string]bool
	// cbind is the tls-server-end-point data of the router's only
	// certificate (cbindFixed); otherwise it is found per connection.
	cbind      []byte
	cbindFixed bool
	// pathTail follows the shard's schema in search_path (see searchPath);
	// setTail the same as string literals (see setPathValue).
	pathTail, setTail string
	// paths caches searchPath's and setPathValue's results by schema (one
	// entry per shard schema, under tagMu): they are needed on every
	// backend checkout.
	paths map[string]schemaPath
	// scan decides, by statement text, whether a statement without a
	// tenant reads only the system catalogs (see session.noShard).
	scan *sqlscan.Cache

	lnMu   sync.Mutex
	ln     net.Listener
	wg     sync.WaitGroup
	closed atomic.Bool

	// Settings Reload may change while the server runs (see lifecycle.go).
	poolCfg    atomic.Pointer[PoolConfig]
	maxClients atomic.Int64
	// draining: Drain was called; new clients are refused with 57P01.
	draining atomic.Bool
	// stopSessions cancels the sessions' context (set by Serve; see Drain).
	stopSessions context.CancelFunc
	// drainBegun is closed once Drain has fenced every shard.
	drainBegun chan struct{}
	drainOnce  sync.Once
	// usage counts per-tenant work; nil when Config.UsageCapacity < 0.
	usage *usage.Sketch
	// tfences holds the fenced tenants' holds (tenantfence.go).
	tfences tenantFences
	// warm pre-warms the pools to the targets of moves (prewarm.go).
	warm prewarmer
	// iw watches session-mode backends while their clients are idle,
	// made at the first use (idlewatch_linux.go); iwFailed: none will be.
	iw       atomic.Pointer[idleWatch]
	iwMu     sync.Mutex
	iwFailed bool
}

// New returns a Server for cfg. It does no I/O.
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:        cfg,
		log:        cfg.Logger,
		m:          cfg.Metrics,
		pools:      make(map[string]*pool.Pool),
		sessions:   make(map[uint32]*session),
		stmtIDs:    make(map[string]string),
		schemaTags: make(map[string]string),
		paths:      make(map[string]schemaPath),
		keys:       make(map[string]wire.SCRAMKeys),
		scan:       sqlscan.NewCache(0),
		drainBegun: make(chan struct{}),
		gateLeft:   make(chan struct{}, 1),
	}
	if cfg.MaxMessageMemory > 0 {
		s.budget = wire.NewBudget(cfg.MaxMessageMemory, cfg.MessageMemoryWait)
	}
	s.tlsUsers = make(map[string]bool, len(cfg.RequireTLSUsers))
	for _, u := range cfg.RequireTLSUsers {
		s.tlsUsers[u] = true
	}
	if t := cfg.TLS; t != nil && t.GetCertificate == nil && t.GetConfigForClient == nil && len(t.Certificates) == 1 && len(t.Certificates[0].Certificate) > 0 {
		// One certificate: its channel binding data is known now (nil
		// when tls-server-end-point is undefined for it, as for Ed25519:
		// SCRAM-SHA-256-PLUS is then not offered).
		s.cbind, _ = wire.TLSServerEndPoint(t.Certificates[0].Certificate[0])
		s.cbindFixed = true
	}
	s.pathTail, s.setTail = ", pg_temp", ", 'pg_temp'"
	if !cfg.NoSharedSchema {
		// Clipped as the server clips an identifier: no schema has a
		// longer name.
		shared := sqlscan.TruncateIdentifier(cfg.SharedSchema)
		s.pathTail = ", " + sqlscan.QuoteIdentifier(shared) + s.pathTail
		s.setTail = ", " + quoteLiteral(shared) + s.setTail
	}
	empty := []*gate{}
	s.gates.Store(&empty)
	pc := cfg.Pool
	s.poolCfg.Store(&pc)
	s.maxClients.Store(int64(cfg.MaxClients))
	s.m.setPools(s.PoolStats)
	s.startUsage()
	s.warm.ctx, s.warm.stop = context.WithCancel(context.Background())
	s.warm.off.Store(cfg.NoPrewarm)
	return s
}

// searchPath is the search_path for a shard's schema: the shard, the shared
// schema, then pg_temp (explicitly last: left out, Postgres would search it
// first, and a temporary table would shadow the shard's table of the same
// name). Statements without a tenant (anySchema) get pg_catalog and pg_temp
// only: they read the system catalogs, and an unqualified name must not
// reach a table of the shared schema.
//
// The names are spelled as PostgreSQL spells them back after SET
// search_path (sqlscan.QuoteIdentifier: shard_0003, public, pg_temp), so
// that SHOW search_path reads the same whether the router set it with SET
// LOCAL (combined.go) or with set_config, which keeps the text as given.
func (s *Server) searchPath(schema string) string { return s.schemaPath(schema).path }

// setPathValue is searchPath(schema) as the value of SET search_path: each
// name a string literal ('shard_0003', 'public', 'pg_temp'). SET stores a
// list setting's literals as quote_identifier spells them, the server's
// own keyword list deciding, so the stored text is searchPath's (up to the
// keywords a server's version has and keywords.txt has not) and never a
// syntax error, whatever word a future PostgreSQL reserves.
func (s *Server) setPathValue(schema string) string { return s.schemaPath(schema).set }

// schemaPath is a schema's search_path in both spellings.
type schemaPath struct{ path, set string }

func (s *Server) schemaPath(schema string) schemaPath {
	s.tagMu.RLock()
	p, ok := s.paths[schema]
	s.tagMu.RUnlock()
	if ok {
		return p
	}
	p = schemaPath{sqlscan.QuoteIdentifier(schema) + s.pathTail, quoteLiteral(schema) + s.setTail}
	if schema == anySchema {
		p = schemaPath{sqlscan.QuoteIdentifier(schema) + ", pg_temp", quoteLiteral(schema) + ", 'pg_temp'"}
	}
	s.tagMu.Lock()
	s.paths[schema] = p
	s.tagMu.Unlock()
	return p
}

func (s *Server) nodeMetrics(node string) *nodeMetrics { return s.m.node(node) }

// Metrics returns the server's metrics (Config.Metrics or its own).
func (s *Server) Metrics() *Metrics { return s.m }

// Map returns the placement map in use, or nil before the first SetMap.
func (s *Server) Map() *placement.Map { return s.mp.Load() }

// Run listens on Config.Listen and serves until ctx ends, then closes every
// client and backend connection.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Open(ctx); err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Open starts listening; Addr is valid after it returns.
func (s *Server) Open(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	s.lnMu.Lock()
	s.ln = ln
	s.lnMu.Unlock()
	s.log.Info("router listening", "addr", ln.Addr().String(), "pool_mode", string(s.cfg.PoolMode), "auth", string(s.cfg.Auth))
	return nil
}

// Addr is the address the server listens on (nil before Open).
func (s *Server) Addr() net.Addr {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve accepts clients on the listener made by Open until ctx ends; then it
// closes the listener, every client and every backend connection.
func (s *Server) Serve(ctx context.Context) error {
	s.lnMu.Lock()
	ln := s.ln
	s.lnMu.Unlock()
	if ln == nil {
		return errors.New("serve: Open was not called")
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sctx, stopSessions := context.WithCancel(ctx)
	defer stopSessions()
	s.lnMu.Lock()
	s.stopSessions = stopSessions
	s.lnMu.Unlock()
	s.idleWatch() // made now: it parks idle clients (park_linux.go)
	var err error
	for {
		nc, aerr := ln.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				var ne net.Error
				if errors.As(aerr, &ne) && ne.Timeout() {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				err = fmt.Errorf("accept: %w", aerr)
			}
			break
		}
		s.wg.Add(1)
		if s.draining.Load() {
			go func() {
				defer s.wg.Done()
				s.refuseDraining(nc)
			}()
			continue
		}
		go func() {
			if !s.serveConn(sctx, nc) {
				s.wg.Done() // a parked session's is its resume's (session.resume)
			}
		}()
	}
	ln.Close()
	s.closed.Store(true)
	s.sessMu.Lock()
	for _, ss := range s.sessions {
		ss.kill()
	}
	s.sessMu.Unlock()
	s.wg.Wait()
	s.stopIdleWatch()
	s.stopPrewarm()
	s.poolsMu.Lock()
	for _, p := range s.pools {
		p.Close()
	}
	s.pools = map[string]*pool.Pool{}
	s.poolsGen.Add(1)
	s.poolsMu.Unlock()
	s.log.Info("router stopped")
	return err
}

// SetMap installs m as the placement map and applies its fences: for every
// shard whose State is placement.StateFenced, new transactions are held
// (queued, not failed) from now on; SetMap waits up to Config.FenceGrace for
// the shard's transactions in flight to finish, then cuts the backend
// connections of those still running (their clients get SQLSTATE 40001) and
// returns. Shards active again in m (possibly on another node) release their
// held transactions, which are routed with m. Calls are serialised; SetMap
// returns ctx's error if ctx ends during the grace (the cut happens then).
func (s *Server) SetMap(ctx context.Context, m *placement.Map) error {
	if m == nil {
		return errors.New("set map: nil map")
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	s.mp.Store(m)
	s.m.MapVersion.Set(float64(m.Version))
	gs := s.gatesFor(len(m.Shards))
	var fenced, newly []*gate
	var newlyInflight []int
	for _, sh := range m.Shards {
		if sh.ID < 0 || sh.ID >= len(gs) {
			continue
		}
		g := gs[sh.ID]
		g.mu.Lock()
		if sh.State == placement.StateFenced {
			if !g.fenced {
				g.fenced = true
				g.fencedAt = time.Now()
				g.release = make(chan struct{})
				s.log.Info("shard fenced", "shard", sh.ID, "node", sh.Node, "in_flight", len(g.inflight))
				newly = append(newly, g)
				newlyInflight = append(newlyInflight, len(g.inflight))
			}
			fenced = append(fenced, g)
		} else if g.fenced && !s.draining.Load() { // Drain keeps every shard fenced
			g.fenced = false
			close(g.release)
			s.log.Info("shard released", "shard", sh.ID, "node", sh.Node, "epoch", sh.Epoch)
		}
		g.mu.Unlock()
	}
	// Nodes whose DSN changed get a fresh pool; pools of nodes gone are closed.
	s.poolsMu.Lock()
	for key, p := range s.pools {
		name, _, _ := strings.Cut(key, "\x00") // see poolFor
		if n, ok := m.Nodes[name]; !ok || n.DSN != p.DSN() {
			delete(s.pools, key)
			s.poolsGen.Add(1)
			go p.Close()
		}
	}
	s.poolsMu.Unlock()
	if !s.closed.Load() {
		for _, n := range m.Nodes {
			s.pool(n) // so each node's MinIdle connections are opened
		}
	}
	s.prewarm(m)
	if err := s.waitTenantFences(ctx, s.applyTenantFences(m)); err != nil {
		return err
	}
	if len(fenced) == 0 {
		return nil
	}
	if len(newly) > 0 {
		// What the fence's acknowledgement waited for (a move's "routers" step).
		t0 := time.Now()
		defer func() {
			for i, g := range newly {
				s.log.Info("shard fence applied", "shard", g.id, "in_flight", newlyInflight[i], "waited", time.Since(t0), "since_fenced", time.Since(g.fencedAt))
			}
		}()
	}
	// Wait for the fenced shards' in-flight transactions to end; cut those
	// still open when their shard's grace (counted from when it was first
	// fenced, so re-applying a fenced map does not extend it) runs out. A
	// cancelled ctx means a newer map supersedes this one (or the router is
	// stopping): return without cutting anything.
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		now := time.Now()
		for _, g := range fenced {
			g.mu.Lock()
			if len(g.inflight) > 0 && g.fenced && now.Sub(g.fencedAt) >= s.cfg.FenceGrace {
				n := 0
				for _, e := range g.inflight {
					if !e.cut {
						e.cut = true
						n++
						if e.be != nil {
							e.be.Kill(&fencedError{shard: g.id})
						}
					}
				}
				if n > 0 {
					s.log.Warn("cut transactions on fenced shard", "shard", g.id, "count", n)
				}
			}
			if g.fenced {
				for _, e := range g.inflight {
					busy = busy || !e.cut // a cut transaction ends when its session notices
				}
			}
			g.mu.Unlock()
		}
		if !busy {
			return nil
		}
		select {
		case <-tick.C:
		case <-s.gateLeft:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fencedError is the kill reason of a backend cut by a fence.
type fencedError struct{ shard int }

func (e *fencedError) Error() string {
	return fmt.Sprintf("shard %d is being moved", e.shard)
}

// gate holds one shard's fence state and the transactions in flight on it.
type gate struct {
	id       int
	mu       sync.Mutex
	fenced   bool
	fencedAt time.Time // when fenced became true; the grace runs from here
	release  chan struct{}
	inflight map[*session]*inflight
}

type inflight struct {
	be     *pool.Conn
	cut    bool
	tenant string // for tenant fences (tenantfence.go)
}

// gatesFor returns the gate slice, grown to at least n shards.
func (s *Server) gatesFor(n int) []*gate {
	gs := *s.gates.Load()
	if len(gs) >= n {
		return gs
	}
	s.gatesMu.Lock()
	defer s.gatesMu.Unlock()
	gs = *s.gates.Load()
	if len(gs) >= n {
		return gs
	}
	ng := make([]*gate, n)
	copy(ng, gs)
	for i := len(gs); i < n; i++ {
		ng[i] = &gate{id: i, inflight: make(map[*session]*inflight)}
	}
	s.gates.Store(&ng)
	return ng
}

// pool returns the pool for node n, creating it on first use.
func (s *Server) pool(n placement.Node) *pool.Pool { return s.poolFor(n, "") }

// poolFor returns the pool of node n whose connections run as role ("" =
// the node DSN's user), creating it on first use: one pool per node and
// role, keyed "node\x00role".
func (s *Server) poolFor(n placement.Node, role string) *pool.Pool {
	key := n.Name
	if role != "" {
		key += "\x00" + role
	}
	s.poolsMu.RLock()
	p := s.pools[key]
	s.poolsMu.RUnlock()
	if p != nil && p.DSN() == n.DSN {
		return p
	}
	s.poolsMu.Lock()
	defer s.poolsMu.Unlock()
	if p = s.pools[key]; p != nil && p.DSN() == n.DSN {
		return p
	}
	if p != nil {
		s.poolsGen.Add(1)
		go p.Close()
	}
	pcfg := s.poolConfig(*s.poolCfg.Load())
	pcfg.Role = role
	p = pool.New(n.Name, n.DSN, pcfg, s.log)
	s.pools[key] = p
	return p
}

// PoolStats returns a snapshot of every backend pool, ordered by node (the
// same as /admin/pools).
func (s *Server) PoolStats() []pool.Stats {
	s.poolsMu.RLock()
	out := make([]pool.Stats, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, p.Stats())
	}
	s.poolsMu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// maxStmtIDs bounds Server.stmtIDs: past it the map starts over, and a
// statement text seen again gets a new name (prepared again where it is
// next used; names are never reused, so no backend confuses two texts).
const maxStmtIDs = 1 << 16

// maxStmtKey is the longest statement text Server.stmtIDs keeps as is;
// longer ones are keyed by their SHA-256.
const maxStmtKey = 1 << 10

// serverName returns the router-unique backend name of a statement text with
// its parameter types.
func (s *Server) serverName(query string, types []byte) string {
	key := stmtKey(query, types)
	s.stmtMu.RLock()
	n, ok := s.stmtIDs[key]
	s.stmtMu.RUnlock()
	if ok {
		return n
	}
	s.stmtMu.Lock()
	defer s.stmtMu.Unlock()
	if n, ok = s.stmtIDs[key]; ok {
		return n
	}
	if len(s.stmtIDs) >= maxStmtIDs {
		clear(s.stmtIDs)
	}
	n = "pgtenant_" + strconv.FormatUint(s.stmtSeq.Add(1), 10)
	s.stmtIDs[key] = n
	return n
}

// forgetStmt makes the next serverName of a statement text with its
// parameter types a new name, when a client deallocated its statement of
// that name: the client's next Parse of the same text must reach a fresh
// server statement (a table or type changed by DDL in between would make
// the old one fail with "cached plan must not change result type" or
// "cache lookup failed for type"), as on a server. Backends keep the old
// one until trimmed (Config.MaxPrepared); clients still holding it use it.
func (s *Server) forgetStmt(name, query string, types []byte) {
	key := stmtKey(query, types)
	s.stmtMu.Lock()
	if s.stmtIDs[key] == name {
		delete(s.stmtIDs, key)
	}
	s.stmtMu.Unlock()
}

// schemaTag returns the short tag for schema used in backend statement
// names: Postgres compares prepared statement names by their first 63
// bytes only, so the schema name itself cannot go in.
func (s *Server) schemaTag(schema string) string {
	s.tagMu.RLock()
	t, ok := s.schemaTags[schema]
	s.tagMu.RUnlock()
	if ok {
		return t
	}
	s.tagMu.Lock()
	defer s.tagMu.Unlock()
	if t, ok = s.schemaTags[schema]; !ok {
		t = "s" + strconv.Itoa(len(s.schemaTags))
		s.schemaTags[schema] = t
	}
	return t
}

// scramKeys returns cached SCRAM keys for a user's password.
func (s *Server) scramKeys(user, password string) (wire.SCRAMKeys, error) {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	k, ok := s.keys[user+"\x00"+password]
	if ok {
		return k, nil
	}
	k, err := wire.DeriveSCRAMKeys(password, 4096)
	if err != nil {
		return k, err
	}
	s.keys[user+"\x00"+password] = k
	return k, nil
}

func randUint32() uint32 {
	var b [4]byte
	rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])
}

// register gives a session a unique cancel key.
func (s *Server) register(ss *session) bool {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	if len(s.sessions) >= int(s.maxClients.Load()) || s.closed.Load() {
		return false
	}
	for {
		pid := randUint32()&0x7fffffff | 1
		if _, dup := s.sessions[pid]; !dup {
			ss.pid = pid
			break
		}
	}
	ss.secret = randUint32()
	s.sessions[ss.pid] = ss
	return true
}

func (s *Server) unregister(ss *session) {
	s.sessMu.Lock()
	if s.sessions[ss.pid] == ss {
		delete(s.sessions, ss.pid)
	}
	s.sessMu.Unlock()
}

// cancel handles a CancelRequest: it cancels the backend query of the
// session with that key, if it is running one.
func (s *Server) cancel(pid uint32, secret []byte) {
	s.sessMu.Lock()
	ss := s.sessions[pid]
	s.sessMu.Unlock()
	if ss == nil || len(secret) != 4 || binary.BigEndian.Uint32(secret) != ss.secret {
		return
	}
	ss.cancelQuery()
}

// serverParams returns the ParameterStatus values to send clients,
// learning them from a backend once.
func (s *Server) serverParams(ctx context.Context) map[string]string {
	if p := s.params.Load(); p != nil {
		return *p
	}
	if m := s.mp.Load(); m != nil {
		names := make([]string, 0, len(m.Nodes))
		for n := range m.Nodes {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			p := s.pool(m.Nodes[n])
			be, err := p.Acquire(ctx)
			cancel()
			if err != nil {
				continue
			}
			s.learnParams(be)
			p.Release(be)
			break
		}
	}
	if p := s.params.Load(); p != nil {
		return *p
	}
	return map[string]string{"server_version": "15.0"}
}

func (s *Server) learnParams(be *pool.Conn) {
	if s.params.Load() != nil {
		return
	}
	out := map[string]string{}
	for _, k := range []string{"server_version", "server_encoding", "DateStyle", "IntervalStyle", "TimeZone", "integer_datetimes", "standard_conforming_strings"} {
		if v, ok := be.Params[k]; ok {
			out[k] = v
		}
	}
	s.params.CompareAndSwap(nil, &out)
}

// stmtKey is the key of a statement text and its parameter types in
// Server.stmtIDs: the text itself when short, else a digest of it (the map
// outlives the session that sent the text, so it keeps no copy of a long one).
func stmtKey(query string, types []byte) string {
	if len(query) <= maxStmtKey {
		return "t" + query + "\x00" + string(types)
	}
	h := sha256.New()
	var buf [4096]byte
	for q := query; len(q) > 0; {
		n := copy(buf[:], q)
		h.Write(buf[:n])
		q = q[n:]
	}
	h.Write([]byte{0})
	h.Write(types)
	return "h" + string(h.Sum(nil))
}
