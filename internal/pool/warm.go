package pool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// WarmResult says what Warm did.
type WarmResult struct {
	// Opened is how many connections Warm opened.
	Opened int
	// Primed is how many connections ran the priming statement (those
	// opened and idle ones that had not run it before).
	Primed int
	// Ready is how many of the pool's most recently used idle connections
	// were primed when Warm returned (at most n).
	Ready int
}

// Warm readies the pool for a burst of n checkouts at once (a router's
// clients held by a fenced shard, released to this node together): the n
// most recently used idle connections, which the burst will get, run prime
// once each (a simple-protocol statement: a DO block loads PL/pgSQL into the
// server process, which a backend otherwise does at its first trigger call),
// and when fewer than n are idle, new ones are opened (within MaxSize) and
// primed. Connections being primed are out of the idle list, so checkouts
// meanwhile get others or open their own. A connection whose prime fails on
// the network is discarded; one whose statement fails (an ErrorResponse) is
// kept, unprimed. Warm returns when every connection is back, with the
// errors joined.
func (p *Pool) Warm(ctx context.Context, n int, prime string) (WarmResult, error) {
	var res WarmResult
	if n <= 0 {
		return res, nil
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return res, ErrClosed
	}
	var take []*Conn
	top := min(n, len(p.idle))
	kept := p.idle[:len(p.idle)-top]
	for _, c := range p.idle[len(p.idle)-top:] {
		if c.primed == prime {
			kept = append(kept, c) // stays where it was, in the top n
			res.Ready++
		} else {
			take = append(take, c)
		}
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	open := min(n-top, p.conf().MaxSize-p.total)
	if open < 0 {
		open = 0
	}
	p.total += open
	p.mu.Unlock()

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	note := func(opened, primed bool, err error) {
		mu.Lock()
		defer mu.Unlock()
		if opened {
			res.Opened++
		}
		if primed {
			res.Primed++
			res.Ready++
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, c := range take {
		wg.Add(1)
		go func() {
			defer wg.Done()
			now := time.Now()
			if c.Broken() || p.expired(c, now) || p.gone(c, now) {
				p.discard(c)
				note(false, false, nil)
				return
			}
			ok, err := c.prime(ctx, prime)
			p.Release(c)
			note(false, ok, err)
		}()
	}
	for range open {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.open(ctx)
			if err != nil {
				note(false, false, err)
				return
			}
			ok, err := c.prime(ctx, prime)
			p.Release(c)
			note(true, ok, err)
		}()
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// prime runs sql on an idle connection (simple protocol) and reads to its
// ReadyForQuery; the connection's unnamed statement (Conn.Unnamed) is gone
// after it (the Query's count in W says so). It reports whether sql succeeded; a network failure marks
// the connection broken, so Release discards it.
func (c *Conn) prime(ctx context.Context, sql string) (bool, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
		defer c.nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Now()) })
	defer stop()
	fail := func(err error) (bool, error) {
		c.MarkBroken()
		return false, fmt.Errorf("prime a connection to node %q: %w", c.node, err)
	}
	if _, err := c.W.Write(wire.AppendQuery(nil, sql)); err != nil {
		return fail(err)
	}
	if err := c.W.Flush(); err != nil {
		return fail(err)
	}
	var serr error
	for {
		typ, body, err := c.R.ReadMessage()
		if err != nil {
			return fail(err)
		}
		switch typ {
		case 'E':
			serr = fmt.Errorf("prime a connection to node %q: %w", c.node, &wire.Error{Severity: wire.ErrorSeverity(body), Code: wire.ErrorCode(body), Message: wire.ErrorMessage(body)})
		case 'Z':
			if len(body) != 1 || body[0] != 'I' {
				return fail(fmt.Errorf("transaction status %q after the priming statement", body))
			}
			if serr != nil {
				return false, serr
			}
			c.primed = sql
			return true, nil
		}
	}
}

// IdleOn counts the idle connections whose Schema is schema: those the
// schema's clients used last (a router sizes Warm on another node by it).
func (p *Pool) IdleOn(schema string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.idle {
		if c.Schema == schema {
			n++
		}
	}
	return n
}
