package catalog

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// AckChannel is the NOTIFY channel on which a router's heartbeat announces
// the map version it has applied: the payload is "version id" (routers of
// older pgtenant versions send the version alone).
const AckChannel = "pgtenant_router_ack"

// AckApplicationName is the application_name of the connection that
// listens for the routers' acknowledgements.
const AckApplicationName = "pgtenant acks"

// WaitAcked waits until every router seen within `within` has acknowledged map
// version v, or until ctx ends. It reads once which live routers are behind
// v, then takes each one's announcement on AckChannel ("version id", sent by
// Heartbeat in the transaction that records it) as its acknowledgement, with
// no second read: one catalog round trip, where reading the routers again
// after each announcement cost a second one inside a move's pause. One
// connection per Catalog listens, for every waiter. The routers are read
// again at least every `every` (a router that stops its heartbeats ages out
// of `within`), and after an announcement without a router id (a router of
// an older pgtenant). Without the listener (its connection failed) it reads
// them every `every`.
func (c *Catalog) WaitAcked(ctx context.Context, v int64, within, every time.Duration) error {
	l := c.ackListener(ctx)
	var sub *ackSub
	if l != nil {
		sub = l.subscribe() // before the read: an announcement after it is seen
		defer l.unsubscribe(sub)
	}
	for {
		// Not prepared (QueryExecModeExec): one round trip also on a
		// connection that has not run it yet, as every connection of a
		// `shard move` process (preparing first cost a second one in the
		// pause).
		rows, err := c.pool.Query(ctx, `SELECT id FROM pgtenant.routers WHERE last_seen > now() - $1::interval AND acked_version < $2`,
			pgx.QueryExecModeExec, within.String(), v)
		if err != nil {
			return fmt.Errorf("wait for the routers to apply map version %d: %w", v, err)
		}
		behind, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("wait for the routers to apply map version %d: %w", v, err)
		}
		if len(behind) == 0 {
			return nil
		}
		done, err := sub.await(ctx, behind, v, every)
		if err != nil {
			return fmt.Errorf("wait for %d routers to apply map version %d: %w", len(behind), v, err)
		}
		if done {
			return nil
		}
	}
}

// await waits until every router of behind has announced v or newer (true),
// or until the routers must be read again (false): `every` has passed, a
// router without an id announced v, or the listener stopped. A nil s only
// waits `every`.
func (s *ackSub) await(ctx context.Context, behind []string, v int64, every time.Duration) (bool, error) {
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		var wake <-chan struct{}
		if s != nil && !s.isDead() {
			var again bool
			if behind, again = s.acked(behind, v); again {
				return false, nil
			}
			if len(behind) == 0 {
				return true, nil
			}
			wake = s.wake
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-wake:
		case <-t.C:
			return false, nil
		}
	}
}

// ackListener holds a connection LISTENing on AckChannel and hands every
// announcement to the subscribed waiters.
type ackListener struct {
	mu     sync.Mutex
	subs   map[*ackSub]struct{}
	dead   bool
	cancel context.CancelFunc
	done   chan struct{}
}

// ackSub is one waiter's view of the announcements made since it
// subscribed: the highest version announced per router id.
type ackSub struct {
	wake chan struct{} // signalled (capacity 1) after each announcement
	mu   sync.Mutex
	seen map[string]int64
	// plain is the highest version announced without a router id.
	plain int64
	dead  bool
}

// acked returns behind without the routers that announced v or newer, and
// whether a router without an id announced v or newer since the last call
// (then the routers must be read again).
func (s *ackSub) acked(behind []string, v int64) ([]string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.plain >= v {
		s.plain = 0
		return behind, true
	}
	out := behind[:0]
	for _, id := range behind {
		if s.seen[id] < v {
			out = append(out, id)
		}
	}
	return out, false
}

func (s *ackSub) isDead() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dead
}

// parseAck reads an announcement: "version id", or "version" from a
// router of an older pgtenant (id "").
func parseAck(payload string) (v int64, id string, ok bool) {
	num, id, _ := strings.Cut(payload, " ")
	v, err := strconv.ParseInt(num, 10, 64)
	return v, id, err == nil
}

// ackListener returns the catalog's running listener, starting it if
// needed; nil when it cannot listen (WaitAcked then polls).
func (c *Catalog) ackListener(ctx context.Context) *ackListener {
	c.acksMu.Lock()
	defer c.acksMu.Unlock()
	if c.acks != nil && !c.acks.isDead() {
		return c.acks
	}
	cfg, err := pgx.ParseConfig(c.dsn)
	if err != nil {
		return nil
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = AckApplicationName
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		_, err = conn.Exec(ctx, `LISTEN `+AckChannel)
		if err != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}
	if err != nil {
		c.logger.Warn("listen for the routers' acknowledgements; polling instead", "err", err)
		return nil
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &ackListener{subs: map[*ackSub]struct{}{}, cancel: cancel, done: make(chan struct{})}
	go l.run(lctx, conn)
	c.acks = l
	return l
}

// stopAcks stops the listener (Close).
func (c *Catalog) stopAcks() {
	c.acksMu.Lock()
	l := c.acks
	c.acks = nil
	c.acksMu.Unlock()
	if l != nil {
		l.cancel()
		<-l.done
	}
}

func (l *ackListener) run(ctx context.Context, conn *pgx.Conn) {
	defer close(l.done)
	defer conn.Close(context.Background())
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			l.mu.Lock()
			l.dead = true
			for s := range l.subs { // they read the acknowledgements again, then poll
				s.mu.Lock()
				s.dead = true
				s.mu.Unlock()
				signal(s.wake)
			}
			l.subs = nil
			l.mu.Unlock()
			return
		}
		v, id, ok := parseAck(n.Payload)
		if !ok {
			continue
		}
		l.mu.Lock()
		for s := range l.subs {
			s.mu.Lock()
			if id == "" {
				s.plain = max(s.plain, v)
			} else if v > s.seen[id] {
				s.seen[id] = v
			}
			s.mu.Unlock()
			signal(s.wake)
		}
		l.mu.Unlock()
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// subscribe returns a waiter's view of the announcements from now on; nil
// when the listener has stopped.
func (l *ackListener) subscribe() *ackSub {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return nil
	}
	s := &ackSub{wake: make(chan struct{}, 1), seen: map[string]int64{}}
	l.subs[s] = struct{}{}
	return s
}

func (l *ackListener) unsubscribe(s *ackSub) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.subs, s)
}

func (l *ackListener) isDead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead
}
