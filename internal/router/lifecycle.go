package router

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// drainingError is what clients get once Drain has begun.
var drainingError = &wire.Error{Severity: "FATAL", Code: "57P01", Message: "the router is shutting down",
	Hint: "Connect again: the router is restarting or being replaced."}

// Draining reports whether Drain has been called.
func (s *Server) Draining() bool { return s.draining.Load() }

// Drain prepares the server to stop without cutting work short: from now on
// new clients are refused with FATAL 57P01, and a client that starts a new
// transaction on a shard gets FATAL 57P01 and is disconnected; transactions
// already running go on. Drain returns when none is left, or when grace has
// passed or ctx ends, with the number of clients still holding a backend
// (their transactions are cut when Serve's context ends). In session mode a
// client holds its backend for its whole session, so it counts until it
// disconnects. Serve keeps running: end its context after Drain returns.
func (s *Server) Drain(ctx context.Context, grace time.Duration) int {
	// Fence every shard for good (SetMap lifts no fence once draining is
	// set; setMu keeps a SetMap from interleaving): a new transaction
	// waits in hold, and ending the sessions' context turns that wait into
	// 57P01.
	s.setMu.Lock()
	if !s.draining.Swap(true) {
		s.log.Info("draining", "grace", grace)
	}
	if m := s.mp.Load(); m != nil {
		for _, g := range s.gatesFor(len(m.Shards)) {
			g.mu.Lock()
			if !g.fenced {
				g.fenced, g.fencedAt, g.release = true, time.Now(), make(chan struct{})
			}
			g.mu.Unlock()
		}
	}
	s.setMu.Unlock()
	s.lnMu.Lock()
	stop := s.stopSessions
	s.lnMu.Unlock()
	if stop != nil {
		stop()
	}
	s.drainOnce.Do(func() { close(s.drainBegun) })
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		n := s.busySessions()
		if n == 0 {
			s.log.Info("drained")
			return 0
		}
		select {
		case <-tick.C:
			continue
		case <-deadline.C:
		case <-ctx.Done():
		}
		s.log.Warn("drain grace over; cutting transactions", "count", n)
		return n
	}
}

// busySessions counts sessions holding a backend connection.
func (s *Server) busySessions() int {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		if ss.beCur.Load() != nil {
			n++
		}
	}
	return n
}

// refuseDraining answers a client that connects during Drain: it goes
// through SSL negotiation like any client (so sslmode=require clients read
// the error too), forwards cancel requests (a draining client may cancel
// its query), and refuses the startup with FATAL 57P01.
func (s *Server) refuseDraining(nc net.Conn) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(s.cfg.StartupTimeout))
	var rw io.ReadWriter = wire.RawIO(nc)
	cr := wire.NewReader(rw, 16<<10, s.cfg.MaxMessage)
	for {
		b, err := cr.ReadStartup()
		if err != nil {
			return
		}
		st, err := wire.ParseStartup(b)
		if err != nil {
			return
		}
		switch st.Kind {
		case wire.KindSSLRequest:
			if s.cfg.TLS == nil {
				nc.Write([]byte{'N'})
				continue
			}
			nc.Write([]byte{'S'})
			tc := tls.Server(nc, s.cfg.TLS)
			if err := tc.Handshake(); err != nil {
				return
			}
			defer tc.Close()
			rw = tc
			cr = wire.NewReader(tc, 16<<10, s.cfg.MaxMessage)
			continue
		case wire.KindGSSENCRequest:
			nc.Write([]byte{'N'})
			continue
		case wire.KindCancel:
			s.cancel(st.PID, st.Secret)
			return
		}
		s.m.ClientRefused.WithLabelValues("draining").Inc()
		rw.Write(wire.AppendError(nil, drainingError))
		return
	}
}

// Reload applies the reloadable settings of cfg to the running server:
// Pool (every node's pool is resized and re-limited in place; no client or
// connection in use is disturbed) and MaxClients. It returns what changed,
// one "name: old -> new" line each, and the settings that differ but only
// take effect when the server starts (Listen, TLS, Auth, Database,
// PoolMode, DDL, MaxPrepared, MaxMessage, the timeouts). Users is read at start
// only: give reloadable users through Credentials.
func (s *Server) Reload(cfg Config) (changed, fixed []string) {
	cfg = cfg.withDefaults()
	old := s.cfg
	oldPool := *s.poolCfg.Load()
	diff := func(list *[]string, name string, a, b any) {
		if a != b {
			*list = append(*list, fmt.Sprintf("%s: %v -> %v", name, a, b))
		}
	}
	np := cfg.Pool
	diff(&changed, "pool_size", poolSize(oldPool), poolSize(np))
	diff(&changed, "pool_min_idle", oldPool.MinIdle, np.MinIdle)
	diff(&changed, "pool_idle_timeout", oldPool.IdleTimeout, np.IdleTimeout)
	diff(&changed, "pool_max_lifetime", oldPool.MaxLifetime, np.MaxLifetime)
	diff(&changed, "pool_wait_timeout", oldPool.WaitTimeout, np.WaitTimeout)
	diff(&changed, "pool_connect_timeout", oldPool.ConnectTimeout, np.ConnectTimeout)
	diff(&changed, "pool_check_idle", oldPool.CheckIdle, np.CheckIdle)
	diff(&changed, "pool_fair_after", oldPool.FairAfter, np.FairAfter)
	diff(&changed, "max_clients", s.maxClients.Load(), int64(cfg.MaxClients))

	diff(&fixed, "listen", old.Listen, cfg.Listen)
	diff(&fixed, "tls", old.TLS != nil, cfg.TLS != nil)
	diff(&fixed, "auth", old.Auth, cfg.Auth)
	diff(&fixed, "database", old.Database, cfg.Database)
	diff(&fixed, "pool_mode", old.PoolMode, cfg.PoolMode)
	diff(&fixed, "ddl", old.DDL, cfg.DDL)
	diff(&fixed, "max_prepared", old.MaxPrepared, cfg.MaxPrepared)
	diff(&fixed, "max_message", old.MaxMessage, cfg.MaxMessage)
	diff(&fixed, "startup_timeout", old.StartupTimeout, cfg.StartupTimeout)
	diff(&fixed, "client_idle_timeout", old.ClientIdleTimeout, cfg.ClientIdleTimeout)
	diff(&fixed, "fence_grace", old.FenceGrace, cfg.FenceGrace)
	diff(&fixed, "hold_timeout", old.HoldTimeout, cfg.HoldTimeout)

	s.maxClients.Store(int64(cfg.MaxClients))
	s.poolsMu.Lock()
	s.poolCfg.Store(&np)
	for _, p := range s.pools {
		p.SetConfig(s.poolConfig(np))
	}
	s.poolsMu.Unlock()
	if len(changed) > 0 {
		s.log.Info("router settings reloaded", "changed", changed)
	}
	return changed, fixed
}

// poolSize is PoolConfig.MaxSize with its default filled in.
func poolSize(pc PoolConfig) int {
	if pc.MaxSize <= 0 {
		return 20
	}
	return pc.MaxSize
}

// poolConfig is the pool package's config for pc.
func (s *Server) poolConfig(pc PoolConfig) pool.Config {
	return pool.Config{
		MaxSize: pc.MaxSize, MinIdle: pc.MinIdle, IdleTimeout: pc.IdleTimeout, MaxLifetime: pc.MaxLifetime,
		WaitTimeout: pc.WaitTimeout, ConnectTimeout: pc.ConnectTimeout, CheckIdle: pc.CheckIdle, MaxMessage: s.cfg.MaxMessage,
		FairAfter: pc.FairAfter, Params: backendParams(),
	}
}

// backendParams are the startup parameters of every backend connection:
// the server then reads statement text as the router's lexer does
// (lexsafe.go), whatever the node role's or database's own settings (ALTER
// ROLE ... SET standard_conforming_strings = off, or client_encoding =
// 'SJIS', which a backend would otherwise start with), and RESET or
// DISCARD ALL come back to these values. A change later is seen in its
// ParameterStatus (lexParamStatus).
func backendParams() map[string]string {
	return map[string]string{"standard_conforming_strings": "on", "client_encoding": "UTF8"}
}
