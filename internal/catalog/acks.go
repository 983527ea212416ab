package catalog

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// AckChannel is the NOTIFY channel on which a router's heartbeat announces
// the map version it has applied (the payload).
const AckChannel = "pgtenant_router_ack"

// AckApplicationName is the application_name of the connection that
// listens for the routers' acknowledgements.
const AckApplicationName = "pgtenant acks"

// WaitAcked waits until every router seen within `within` has acknowledged map
// version v, or until ctx ends. The routers' acknowledgements are read again
// whenever one of version v or newer is announced on AckChannel (one
// connection per Catalog listens, for every waiter), and at least every
// `every` without one (a router that stops its heartbeats ages out of
// `within`; one of an older pgtenant does not notify). Without the listener
// (its connection failed) it reads them every `every`.
func (c *Catalog) WaitAcked(ctx context.Context, v int64, within, every time.Duration) error {
	l := c.ackListener(ctx)
	for {
		var wake <-chan struct{}
		if l != nil {
			wake = l.subscribe(v) // before the read: an acknowledgement after it wakes us
		}
		var behind int
		err := c.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE acked_version < $2) FROM pgtenant.routers WHERE last_seen > now() - $1::interval`,
			within.String(), v).Scan(&behind)
		if err != nil {
			return fmt.Errorf("wait for the routers to apply map version %d: %w", v, err)
		}
		if behind == 0 {
			return nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for %d routers to apply map version %d: %w", behind, v, ctx.Err())
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// ackListener holds a connection LISTENing on AckChannel and wakes the
// waiters of each version announced.
type ackListener struct {
	mu      sync.Mutex
	waiters map[int64]chan struct{} // version → closed when one ≥ it is announced
	dead    bool
	cancel  context.CancelFunc
	done    chan struct{}
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
	l := &ackListener{waiters: map[int64]chan struct{}{}, cancel: cancel, done: make(chan struct{})}
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
			for v, ch := range l.waiters { // they read the acknowledgements again, then poll
				close(ch)
				delete(l.waiters, v)
			}
			l.mu.Unlock()
			return
		}
		got, err := strconv.ParseInt(n.Payload, 10, 64)
		if err != nil {
			continue
		}
		l.mu.Lock()
		for v, ch := range l.waiters {
			if v <= got {
				close(ch)
				delete(l.waiters, v)
			}
		}
		l.mu.Unlock()
	}
}

// subscribe returns a channel closed when a router announces version v or
// newer.
func (l *ackListener) subscribe(v int64) <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead {
		return nil
	}
	ch, ok := l.waiters[v]
	if !ok {
		ch = make(chan struct{})
		l.waiters[v] = ch
	}
	return ch
}

func (l *ackListener) isDead() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dead
}
