package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// WatchApplicationName is the application_name of Watch's listening
// connection (unless the catalog DSN sets one), as pg_stat_activity shows it.
const WatchApplicationName = "pgtenant watch"

// WatchOptions tunes Watch. Zero values mean the defaults.
type WatchOptions struct {
	// Poll is how often the map version is checked even without a NOTIFY, as a
	// safety net for notifications lost while disconnected. Zero means 2s.
	Poll time.Duration
	// Retry is the wait before reconnecting after the catalog connection
	// fails. Zero means 1s.
	Retry time.Duration
}

// Watch follows the map: it LISTENs on Channel, loads the map, and calls apply
// with every new version (and once at start). After the first load it reads
// only what each version changed (see loadMapSince). It also LISTENs on
// TenantChannel and keeps the maps' tenant cache true: entries a change
// names are dropped, and the cache starts empty on every (re)connection. Calls of apply never overlap;
// while one runs Watch keeps listening, and a newer map cancels the running
// apply's context (its version then counts as not applied) and is applied
// next. When the catalog becomes unreachable it keeps retrying, and the caller
// keeps serving from the last map it was given. Watch returns when ctx ends,
// or when apply returns an error.
func (c *Catalog) Watch(ctx context.Context, opts WatchOptions, apply func(context.Context, *placement.Map) error) error {
	if opts.Poll == 0 {
		opts.Poll = 2 * time.Second
	}
	if opts.Retry == 0 {
		opts.Retry = time.Second
	}
	var applied int64 = -1
	var last *placement.Map // the last map read: the next is read as changes to it
	for {
		err := c.watchOnce(ctx, opts, &applied, &last, apply)
		if ctx.Err() != nil {
			return nil
		}
		var ae applyError
		if errors.As(err, &ae) {
			return ae.err
		}
		c.logger.Warn("catalog watch interrupted; serving the last map", "err", err, "map_version", applied)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(opts.Retry):
		}
	}
}

type applyError struct{ err error }

func (e applyError) Error() string { return e.err.Error() }

// running is an apply in flight. Watch keeps listening while it runs: a
// newer map cancels it (so a router waiting for a fenced shard's transactions
// to drain moves on at once when the fence is lifted) and is applied after it.
type running struct {
	version int64
	cancel  context.CancelFunc
	done    chan error
}

func (c *Catalog) watchOnce(ctx context.Context, opts WatchOptions, applied *int64, last **placement.Map, apply func(context.Context, *placement.Map) error) error {
	cfg, err := pgx.ParseConfig(c.dsn)
	if err != nil {
		return fmt.Errorf("parse catalog connection string: %w", err)
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = WatchApplicationName
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	for _, ch := range []string{Channel, TenantChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("listen: %w", err)
		}
	}
	// Tenant changes made before the LISTEN were not seen: start with an
	// empty cache; from now on the notifications invalidate it.
	dir := c.tenants()
	dir.listening()
	defer dir.deaf()
	var cur *running
	// settle records the outcome of the apply in flight once it has returned.
	settle := func(r *running, err error) error {
		switch {
		case err == nil:
			*applied = r.version
		case errors.Is(err, context.Canceled) && ctx.Err() == nil:
			// superseded by a newer map
		default:
			return applyError{err}
		}
		return nil
	}
	defer func() {
		if cur != nil {
			cur.cancel()
			<-cur.done
		}
	}()
	reload := func() error {
		m, err := c.loadMapSince(ctx, conn, *last)
		if err != nil {
			return fmt.Errorf("load map: %w", err)
		}
		*last = m
		if cur != nil {
			if cur.version == m.Version {
				return nil
			}
			cur.cancel()
			err := <-cur.done
			r := cur
			cur = nil
			if err := settle(r, err); err != nil {
				return err
			}
		}
		if m.Version == *applied {
			return nil
		}
		actx, cancel := context.WithCancel(ctx)
		r := &running{version: m.Version, cancel: cancel, done: make(chan error, 1)}
		go func() {
			err := apply(actx, m)
			cancel()
			r.done <- err
		}()
		cur = r
		return nil
	}
	if err := reload(); err != nil {
		return err
	}
	for {
		wait := opts.Poll
		if cur != nil {
			wait = 20 * time.Millisecond // notice the apply finishing
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("wait for notification: %w", err)
		}
		if cur != nil {
			select {
			case err := <-cur.done:
				r := cur
				cur = nil
				if err := settle(r, err); err != nil {
					return err
				}
			default:
			}
		}
		if err == nil && n.Channel == TenantChannel {
			dir.notified(n.Payload)
			continue
		}
		if err != nil { // timed out: poll whether the version is still ours
			if cur != nil {
				continue
			}
			var v int64
			if err := conn.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v); err != nil {
				return fmt.Errorf("poll map version: %w", err)
			}
			if v == *applied {
				continue
			}
		}
		if err := reload(); err != nil {
			return err
		}
	}
}
