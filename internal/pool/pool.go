package pool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// ErrWaitTimeout is returned by Acquire when no connection became free within
// Config.WaitTimeout.
var ErrWaitTimeout = errors.New("timed out waiting for a free backend connection")

// ErrClosed is returned by Acquire on a closed pool.
var ErrClosed = errors.New("pool is closed")

// ConnectError wraps a failure to open a connection to a node.
type ConnectError struct {
	Node string
	Err  error
}

func (e *ConnectError) Error() string { return fmt.Sprintf("connect to node %q: %v", e.Node, e.Err) }

func (e *ConnectError) Unwrap() error { return e.Err }

// RefusedCode returns the SQLSTATE with which a node's server refused a new
// connection while it was up and reachable: class 53 (insufficient
// resources; 53300 when its max_connections, or a role's or database's
// connection limit, is reached) or 57P03 (starting up, shutting down, in
// recovery). It returns "" for any other error: a network failure, a
// timeout, authentication.
func RefusedCode(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return ""
	}
	if strings.HasPrefix(pe.Code, "53") || pe.Code == "57P03" {
		return pe.Code
	}
	return ""
}

// Config limits one node's pool. Zero values mean the defaults given.
type Config struct {
	// MaxSize is the most connections open at once. Zero means 20.
	MaxSize int
	// MinIdle connections are kept open even when unused. Zero means none.
	MinIdle int
	// IdleTimeout closes connections unused this long (above MinIdle). Zero
	// means 5 minutes; negative means never.
	IdleTimeout time.Duration
	// MaxLifetime closes connections this old when they are next returned.
	// Zero means 1 hour; negative means never.
	MaxLifetime time.Duration
	// WaitTimeout bounds how long Acquire waits for a free connection when
	// the pool is full. Zero means 5 seconds.
	WaitTimeout time.Duration
	// ConnectTimeout bounds opening one connection. Zero means 5 seconds.
	ConnectTimeout time.Duration
	// FairAfter bounds how long a checkout waits behind later ones: a
	// released connection goes to the checkout that began to wait last
	// (its client's data still in the CPU's caches), unless the one waiting
	// longest has waited FairAfter or more: then to that one. Zero means
	// 1 second; negative means first come, first served always; at most
	// half of WaitTimeout.
	FairAfter time.Duration
	// MaxMessage bounds a message read from the server. Zero means
	// wire.DefaultMaxMessage.
	MaxMessage int
	// CheckIdle: a connection idle at least this long is checked before
	// Acquire hands it out, with a non-blocking peek at its socket. An idle
	// backend sends nothing unless it is going away (a server restart or
	// pg_terminate_backend sends FATAL 57P01 and closes), so anything
	// there, or end of file, discards the connection instead of failing
	// the next transaction. Zero means at every checkout (the peek costs
	// about half a microsecond: bench/README.md "Session 9: hostile");
	// negative means never.
	CheckIdle time.Duration
	// Role, when set, is sent as the startup parameter role: the server
	// runs the connection's statements as that role, and RESET ROLE,
	// RESET ALL and DISCARD ALL come back to it rather than to the
	// connection's user. Empty means the connection's user.
	Role string
	// Params are startup parameters sent with every connection, over the
	// DSN's. They take precedence over the role's and the database's own
	// settings (ALTER ROLE/DATABASE ... SET), and RESET, RESET ALL and
	// DISCARD ALL come back to them. A server that reports another value
	// for one of them at connect fails the connect (compared ignoring case:
	// give values as the server reports them, "UTF8", "on"). Nil means none.
	Params map[string]string
}

func (c Config) withDefaults() Config {
	if c.MaxSize <= 0 {
		c.MaxSize = 20
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = time.Hour
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = 5 * time.Second
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.FairAfter == 0 {
		c.FairAfter = time.Second
	}
	if c.FairAfter > c.WaitTimeout/2 {
		c.FairAfter = c.WaitTimeout / 2 // a waiter behind later ones has time left
	}
	if c.MinIdle > c.MaxSize {
		c.MinIdle = c.MaxSize
	}
	return c
}

// Conn is one backend connection. Its exported state fields belong to
// whoever holds it (checked out); the pool never touches them.
type Conn struct {
	// R reads server messages; W buffers messages to the server (and
	// counts those that drop the unnamed statement: see Unnamed).
	R *wire.Reader
	W *wire.ServerWriter
	// PID and Secret are the server's cancel key.
	PID    uint32
	Secret []byte
	// Params are the ParameterStatus values reported at connect.
	Params map[string]string
	// ReportsPath is whether the server reports search_path among them,
	// and so tells its client each change of it (PostgreSQL 18 and later);
	// set once at connect.
	ReportsPath bool

	// Schema and Tenant are the search_path and pgtenant.tenant_id last set
	// on this connection; SessionSig identifies the client session settings
	// last applied ("" = server defaults).
	Schema, Tenant, SessionSig string
	// LastClient is the owner's id of the client that last held the
	// connection (0: none yet); the pool does not read it.
	LastClient uint64
	// UnnamedParse is the owner's count of the Parse that made the unnamed
	// statement SetUnnamed recorded; the pool does not read it.
	UnnamedParse uint64
	// Prepared holds the names of statements prepared on this connection,
	// each with a value of the owner's (the router: a hash of its result
	// shape as a Describe told it, 0 while unknown).
	Prepared map[string]uint64
	// unnamed is what the unnamed statement holds (owner-defined), as of
	// W's count unnamedGen (see SetUnnamed).
	unnamed    any
	unnamedGen uint64

	node     string
	nc       net.Conn
	peek     *peeker // made at the first look (see quiet)
	created  time.Time
	lastUsed time.Time
	broken   atomic.Bool
	reason   atomic.Pointer[error]
	pool     *Pool
	// primed is the priming statement the connection ran (see Warm).
	primed string
	// cancelling is closed when the cancel request in flight (see Cancel)
	// has been taken by the server; nil when there is none. Writes wait
	// for it (see holdWriter).
	cancelling atomic.Pointer[chan struct{}]
}

// quiet reports whether nothing is waiting to be read on an idle
// connection's socket and it is still open (see Config.CheckIdle).
func (c *Conn) quiet() bool {
	if c.peek == nil {
		c.peek = newPeeker(c.nc)
	}
	return c.peek.quiet()
}

// peeker looks at a connection's socket without reading from it or
// blocking. It is made once per connection, with its callback, so that the
// look at every checkout is one system call and allocates nothing (the
// syscall.RawConn and a closure made per look cost 3 allocations).
type peeker struct {
	raw syscall.RawConn
	// always is the answer where the socket cannot be looked at: quiet for
	// a connection that is no socket (tests), not quiet where the socket's
	// descriptor could not be had.
	always bool
	buf    [1]byte
	empty  bool // set by peek: nothing to read and still open
	peek   func(fd uintptr) bool
}

func newPeeker(nc net.Conn) *peeker {
	if t, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = t.NetConn() // TLS: any record that arrived counts
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return &peeker{always: true}
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return &peeker{}
	}
	pk := &peeker{raw: raw}
	pk.peek = func(fd uintptr) bool {
		// Raw: the peek never blocks (MSG_DONTWAIT), and syscall.Syscall6
		// would tell the scheduler, whose entersyscall wakes a deep-sleeping
		// sysmon and resets its poll to every 20 µs: ~6 % of the router's
		// CPU under load went to that (bench/README.md, session 11).
		_, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&pk.buf[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		pk.empty = errno == syscall.EAGAIN
		return true
	}
	return pk
}

// quiet reports whether the socket has nothing to read and is open.
func (pk *peeker) quiet() bool {
	if pk.raw == nil {
		return pk.always
	}
	pk.empty = false
	return pk.raw.Read(pk.peek) == nil && pk.empty
}

// gone reports whether an idle connection's server has sent something
// (or closed it) since it was last used, when Config.CheckIdle asks for
// the check.
func (p *Pool) gone(c *Conn, now time.Time) bool {
	ci := p.conf().CheckIdle
	return ci >= 0 && now.Sub(c.lastUsed) >= ci && !c.quiet()
}

// Readable reports whether the server has sent something not yet read
// from the socket (or closed it), without blocking.
func (c *Conn) Readable() bool { return !c.quiet() }

// Socket is the connection's socket for system calls of the holder's (the
// TCP connection's under TLS), or nil where it is no socket (tests).
func (c *Conn) Socket() syscall.RawConn {
	if c.peek == nil {
		c.peek = newPeeker(c.nc)
	}
	return c.peek.raw
}

// SetUnnamed records what the server's unnamed prepared statement holds
// (owner-defined, comparable): call it right after writing the Parse of
// the unnamed statement to W.
func (c *Conn) SetUnnamed(v any) {
	c.unnamed, c.unnamedGen = v, c.W.UnnamedGen()
}

// Unnamed is what SetUnnamed recorded, or nil once a message that drops the
// unnamed statement (any Query, another Parse of it) was written to W since,
// by whoever wrote it, or ForgetUnnamed was called.
func (c *Conn) Unnamed() any {
	if c.unnamed == nil || c.W.UnnamedGen() != c.unnamedGen {
		return nil
	}
	return c.unnamed
}

// ForgetUnnamed drops what SetUnnamed recorded, for what W cannot see: a
// Parse of the unnamed statement that failed, or that the server skipped
// after an error.
func (c *Conn) ForgetUnnamed() { c.unnamed = nil }

// Release returns the connection to the pool it came from.
func (c *Conn) Release() { c.pool.Release(c) }

// Pool is the pool the connection belongs to.
func (c *Conn) Pool() *Pool { return c.pool }

// Node is the name of the node the connection is to.
func (c *Conn) Node() string { return c.node }

// MarkBroken makes Release discard the connection.
func (c *Conn) MarkBroken() { c.broken.Store(true) }

// Broken reports whether the connection has failed or been killed.
func (c *Conn) Broken() bool { return c.broken.Load() }

// Kill closes the connection from any goroutine, remembering why; whoever
// holds it sees read/write errors and KillReason returns reason.
func (c *Conn) Kill(reason error) {
	c.reason.CompareAndSwap(nil, &reason)
	c.broken.Store(true)
	c.nc.Close()
}

// KillReason is the reason given to Kill, or nil.
func (c *Conn) KillReason() error {
	if p := c.reason.Load(); p != nil {
		return *p
	}
	return nil
}

// SetDeadline sets the network deadline of the connection.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// Cancel asks the server to cancel the query running on this connection.
// It returns nil once the server has taken the request (it closes the
// connection then); an error leaves unknown whether the request reached
// the server, or still will. Until it returns (at most CancelHold), writes
// to the connection wait: a message the server read between the request's
// two signals would be cancelled too (see holdWriter).
func (c *Conn) Cancel(ctx context.Context) error {
	defer c.holdWrites()()
	addr := c.nc.RemoteAddr()
	var d net.Dialer
	nc, err := d.DialContext(ctx, addr.Network(), addr.String())
	if err != nil {
		return fmt.Errorf("cancel on node %q: %w", c.node, err)
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	if _, err := nc.Write(wire.AppendCancelRequest(nil, c.PID, c.Secret)); err != nil {
		return fmt.Errorf("cancel on node %q: %w", c.node, err)
	}
	var b [1]byte
	// The server closes the connection once it has signalled the backend.
	// Anything else (a deadline, a reset) leaves the request's fate unknown.
	if _, err := nc.Read(b[:]); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cancel on node %q: the server did not confirm the request: %w", c.node, err)
	}
	return nil
}

// Stats is a snapshot of a pool.
type Stats struct {
	Node         string `json:"node"`
	Total        int    `json:"total"`
	Idle         int    `json:"idle"`
	InUse        int    `json:"in_use"`
	Waiting      int    `json:"waiting"`
	MaxSize      int    `json:"max_size"`
	Acquires     int64  `json:"acquires"`
	Waits        int64  `json:"waits"`
	WaitTimeouts int64  `json:"wait_timeouts"`
	ConnectErrs  int64  `json:"connect_errors"`
	Opened       int64  `json:"opened"`
	Closed       int64  `json:"closed"`
}

// Pool holds connections to one node.
type Pool struct {
	node, dsn string
	cfg       atomic.Pointer[Config] // replaced whole by SetConfig
	log       *slog.Logger

	mu      sync.Mutex
	idle    []*Conn
	total   int
	waiters waitQueue // last come, first served within FairAfter (see next)
	closed  bool
	// retryAt is when a checkout may open a connection again after a
	// failed connect while others are open; failStreak counts the connects
	// failed in a row (see connectBackoff).
	retryAt    time.Time
	failStreak atomic.Int32
	// expiry fails the waiters past their deadline; armed (at expiryAt)
	// while there are waiters. One timer per pool rather than one per
	// wait, and wait channels reused (chans): a wait allocates nothing,
	// and waits for a backend are what thousands of clients on a few
	// backends do on every transaction.
	expiry   *time.Timer
	expiryAt time.Time
	chans    sync.Pool // of chan handoff

	acquires, waits, waitTimeouts, connectErrs, opened, closedN atomic.Int64

	stop chan struct{}
	done chan struct{}
}

// waiter is an Acquire waiting for a connection since since.
type waiter struct {
	ch              chan handoff
	since, deadline time.Time
}

// handoff is what a waiter gets: a connection, a slot to open one in (c
// nil, err nil), or why it waits no longer (ErrWaitTimeout, ErrClosed).
type handoff struct {
	c   *Conn
	err error
}

// New returns a pool for node reachable at dsn. It opens no connection; a
// background goroutine keeps MinIdle connections and enforces IdleTimeout
// until Close.
func New(node, dsn string, cfg Config, log *slog.Logger) *Pool {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pool{node: node, dsn: dsn, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	c := cfg.withDefaults()
	p.cfg.Store(&c)
	go p.maintain()
	return p
}

// conf returns the limits in force.
func (p *Pool) conf() *Config { return p.cfg.Load() }

// SetConfig changes the pool's limits while it serves (a router's config
// reload). A larger MaxSize lets waiting checkouts open connections at once;
// a smaller one closes connections as they are returned until the pool fits.
// Connections in use are never interrupted. MaxMessage applies to
// connections opened from now on.
func (p *Pool) SetConfig(cfg Config) {
	c := cfg.withDefaults()
	c.Role = p.conf().Role // a pool's role is its identity, not a setting
	p.mu.Lock()
	p.cfg.Store(&c)
	var grant []chan handoff
	for p.waiters.len() > 0 && p.total < c.MaxSize && !p.closed {
		grant = append(grant, p.waiters.pop())
		p.total++
	}
	var drop []*Conn
	for len(p.idle) > 0 && p.total-len(drop) > c.MaxSize {
		drop = append(drop, p.idle[0])
		p.idle = p.idle[1:]
	}
	p.mu.Unlock()
	for _, w := range grant {
		w <- handoff{} // a slot: the waiter opens a connection in it
	}
	for _, c := range drop {
		p.discard(c)
	}
}

// Node is the pool's node name; DSN its connection string.
func (p *Pool) Node() string { return p.node }

// DSN is the connection string the pool dials.
func (p *Pool) DSN() string { return p.dsn }

// Acquire returns a connection: the most recently used idle one, else a new
// one while the pool is below MaxSize, else one released within WaitTimeout
// (ErrWaitTimeout after), to the waiters last come first unless one has
// waited FairAfter (see Config.FairAfter). A connect that fails while the pool
// has other connections open does not fail the checkout: it waits for one
// of them (see connectBackoff); with none open, it fails with the
// *ConnectError, and so do the checkouts waiting. Always taking the most
// recently used keeps the work on as few server processes as the load needs, whose caches
// stay warm: routerbench measured preferring an idle connection already on
// the statement's schema (to skip setting search_path) 3-20% slower in
// transactions per second than this, with 16 schemas and 20 connections.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	p.acquires.Add(1)
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if c := p.popIdle(); c != nil {
			if c = p.usable(c); c == nil {
				continue
			}
			return c, nil
		}
		if p.total < p.conf().MaxSize && (p.total == 0 || !time.Now().Before(p.retryAt)) {
			p.total++
			p.mu.Unlock()
			c, err := p.open(ctx)
			if err != nil && p.othersOpen() {
				continue // wait for one of them
			}
			return c, err
		}
		w, _ := p.chans.Get().(chan handoff)
		if w == nil {
			w = make(chan handoff, 1)
		}
		now := time.Now()
		deadline := now.Add(p.conf().WaitTimeout)
		p.waiters.push(waiter{ch: w, since: now, deadline: deadline})
		p.armExpiry(deadline)
		p.mu.Unlock()
		p.waits.Add(1)
		c, err := p.wait(ctx, w)
		if err != nil {
			return nil, err
		}
		if c == nil { // a slot was freed: open a connection in it
			c, err := p.open(ctx)
			if err != nil && p.othersOpen() {
				continue
			}
			return c, err
		}
		return c, nil
	}
}

// TryAcquire is Acquire without waiting and without opening a connection:
// the most recently used idle connection that passes Acquire's checks, or
// nil when there is none (or the pool is closed): then call Acquire. A
// caller that must make a wait cancellable (a context per checkout) makes
// it only when there is a wait.
func (p *Pool) TryAcquire() *Conn {
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return nil
		}
		c := p.popIdle()
		if c == nil {
			p.mu.Unlock()
			return nil
		}
		if c = p.usable(c); c != nil {
			p.acquires.Add(1)
			return c
		}
	}
}

// popIdle takes the most recently used idle connection, or nil, with p.mu
// held; it unlocks p.mu when it returns one.
func (p *Pool) popIdle() *Conn {
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	c := p.idle[n-1]
	p.idle[n-1] = nil
	p.idle = p.idle[:n-1]
	p.mu.Unlock()
	return c
}

// usable returns c, taken from the idle list, when it may be handed out:
// not broken, not past its lifetime, and (CheckIdle) with nothing from the
// server waiting on its socket; else it closes c and returns nil.
func (p *Pool) usable(c *Conn) *Conn {
	now := time.Now()
	if c.Broken() || p.expired(c, now) || p.gone(c, now) {
		p.discard(c)
		return nil
	}
	return c
}

// connectBackoff is how long after the fails-th failed connect in a row a
// checkout that finds no idle connection waits for one of those open (if
// any) rather than trying to open another: a node that refused one (its
// max_connections reached) or was slow to answer (a connect timeout under
// load) is not asked again at every checkout, and its clients are served by
// the connections it has, as pgbouncer's are (server_login_retry, 15 s).
// It doubles from 1 s up to 16 s with each failure; r in [0, 1) picks the
// wait in its upper half (jitter), so that routers refused together do not
// retry together. A connect that succeeds starts over.
func connectBackoff(fails int, r float64) time.Duration {
	d := connectBackoffMax
	if fails < 5 {
		d = time.Second << max(fails-1, 0)
	}
	return d/2 + time.Duration(r*float64(d/2))
}

// connectBackoffMax is connectBackoff's longest step.
const connectBackoffMax = 16 * time.Second

// othersOpen reports, after a failed connect, whether the pool holds other
// connections to the node, which a checkout can wait for.
func (p *Pool) othersOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total > 0 && !p.closed
}

// wait waits for w's handoff, or for ctx to end. Only this goroutine holds
// w while it is queued; it goes back to p.chans empty.
func (p *Pool) wait(ctx context.Context, w chan handoff) (*Conn, error) {
	var h handoff
	select {
	case h = <-w:
	case <-ctx.Done():
		p.mu.Lock()
		if p.waiters.remove(w) {
			p.mu.Unlock()
			p.chans.Put(w)
			return nil, ctx.Err()
		}
		p.mu.Unlock()
		// Someone handed us a connection (or a slot) just as we gave up:
		// pass it on.
		h = <-w
		p.chans.Put(w)
		if h.err == nil {
			if h.c != nil {
				p.Release(h.c)
			} else {
				p.freeSlot()
			}
		}
		return nil, ctx.Err()
	}
	p.chans.Put(w)
	switch {
	case errors.Is(h.err, ErrWaitTimeout):
		return nil, fmt.Errorf("node %q: %w", p.node, ErrWaitTimeout)
	case h.err != nil:
		return nil, h.err
	}
	return h.c, nil
}

// waitQueue is the waiters in order of arrival: a slice read from head (or
// from its end: see next), compacted when half of it has been read, so that
// a steady queue of thousands of waiters is not copied to a new array every
// few waits.
type waitQueue struct {
	q    []waiter
	head int
}

func (w *waitQueue) len() int { return len(w.q) - w.head }

func (w *waitQueue) push(x waiter) {
	if w.head > 0 && len(w.q) == cap(w.q) && w.head >= len(w.q)/2 {
		n := copy(w.q, w.q[w.head:])
		clear(w.q[n:])
		w.q, w.head = w.q[:n], 0
	}
	w.q = append(w.q, x)
}

// pop takes the first waiter off the queue; it must not be empty.
func (w *waitQueue) pop() chan handoff {
	x := w.q[w.head]
	w.q[w.head] = waiter{}
	w.head++
	if w.head == len(w.q) {
		w.q, w.head = w.q[:0], 0
	}
	return x.ch
}

// next takes off the queue, which must not be empty, the waiter a released
// connection goes to: the last to come, unless the first has waited fair
// or longer by now (see Config.FairAfter; negative: always the first).
func (w *waitQueue) next(now time.Time, fair time.Duration) chan handoff {
	if fair < 0 || now.Sub(w.q[w.head].since) >= fair {
		return w.pop()
	}
	n := len(w.q) - 1
	x := w.q[n]
	w.q[n] = waiter{}
	w.q = w.q[:n]
	if w.head == n {
		w.q, w.head = w.q[:0], 0
	}
	return x.ch
}

// remove takes ch's waiter off the queue, if it is there.
func (w *waitQueue) remove(ch chan handoff) bool {
	for i := w.head; i < len(w.q); i++ {
		if w.q[i].ch == ch {
			copy(w.q[i:], w.q[i+1:])
			w.q[len(w.q)-1] = waiter{}
			w.q = w.q[:len(w.q)-1]
			return true
		}
	}
	return false
}

// expire takes the waiters whose deadline is not after now off the queue,
// appending their channels to late, and returns the earliest deadline of
// those left (zero when none).
func (w *waitQueue) expire(now time.Time, late []chan handoff) ([]chan handoff, time.Time) {
	keep := w.q[:0]
	var next time.Time
	for _, x := range w.q[w.head:] {
		if !x.deadline.After(now) {
			late = append(late, x.ch)
			continue
		}
		keep = append(keep, x)
		if next.IsZero() || x.deadline.Before(next) {
			next = x.deadline
		}
	}
	clear(w.q[len(keep):])
	w.q, w.head = keep, 0
	return late, next
}

// drain empties the queue and returns its channels.
func (w *waitQueue) drain() []chan handoff {
	var out []chan handoff
	for w.len() > 0 {
		out = append(out, w.pop())
	}
	return out
}

// armExpiry makes the expiry timer fire by deadline (p.mu held).
func (p *Pool) armExpiry(deadline time.Time) {
	if p.expiry != nil && !p.expiryAt.IsZero() && !deadline.Before(p.expiryAt) {
		return // armed for an earlier waiter; expire re-arms for the rest
	}
	p.expiryAt = deadline
	d := time.Until(deadline)
	if p.expiry == nil {
		p.expiry = time.AfterFunc(d, p.expire)
	} else {
		p.expiry.Reset(d)
	}
}

// expire fails the waiters whose deadline has passed with ErrWaitTimeout
// and re-arms the timer for the earliest deadline of the others.
func (p *Pool) expire() {
	now := time.Now()
	p.mu.Lock()
	late, next := p.waiters.expire(now, nil)
	p.expiryAt = time.Time{}
	if !next.IsZero() && !p.closed {
		p.armExpiry(next)
	}
	p.mu.Unlock()
	for _, w := range late {
		p.waitTimeouts.Add(1)
		w <- handoff{err: ErrWaitTimeout}
	}
}

// open opens a connection in a slot already counted in p.total. On failure
// it gives the slot up (see connectFailed).
func (p *Pool) open(ctx context.Context) (*Conn, error) {
	t0 := time.Now()
	c, err := p.connect(ctx)
	if err != nil {
		cerr := &ConnectError{Node: p.node, Err: err}
		if errors.Is(ctx.Err(), context.Canceled) {
			// The one who asked gave up: no failure of the node's (a
			// deadline passed is one: the node was slow to answer).
			p.freeSlot()
			return nil, cerr
		}
		p.connectErrs.Add(1)
		p.connectFailed(cerr, time.Since(t0))
		return nil, cerr
	}
	p.opened.Add(1)
	if p.failStreak.Load() != 0 {
		p.failStreak.Store(0)
	}
	return c, nil
}

// connectFailed gives up the slot of a connect that failed with err after
// took. The slot goes to no waiter (it would only try again): waiters wait
// for the connections open, or, when there are none, fail with err. For
// connectBackoff, checkouts open no connection while others are open.
func (p *Pool) connectFailed(err error, took time.Duration) {
	p.mu.Lock()
	fails := p.failStreak.Add(1) // under mu: retryAt follows the count, never moves earlier
	p.total--
	p.retryAt = time.Now().Add(connectBackoff(int(fails), rand.Float64()))
	open := p.total
	var fail []chan handoff
	if open == 0 {
		fail = p.waiters.drain()
	}
	p.mu.Unlock()
	for _, w := range fail {
		w <- handoff{err: err}
	}
	p.log.Warn("backend connection not opened", "node", p.node, "err", err, "took", took.Round(time.Millisecond), "open", open)
}

func (p *Pool) connect(ctx context.Context) (*Conn, error) {
	cfg, err := pgconn.ParseConfig(p.dsn)
	if err != nil {
		return nil, fmt.Errorf("parse dsn: %w", err)
	}
	cfg.ConnectTimeout = p.conf().ConnectTimeout
	if role := p.conf().Role; role != "" {
		cfg.RuntimeParams["role"] = role
	}
	for k, v := range p.conf().Params {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(ctx, p.conf().ConnectTimeout)
	defer cancel()
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("sync conn: %w", err)
	}
	for k, v := range p.conf().Params {
		if got := pc.ParameterStatus(k); got != "" && !strings.EqualFold(got, v) {
			pc.Close(ctx)
			return nil, fmt.Errorf("startup parameter %s: the server reports %q, want %q", k, got, v)
		}
	}
	h, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("hijack: %w", err)
	}
	now := time.Now()
	rw := wire.RawServerIO(h.Conn)
	hw := &holdWriter{w: rw}
	c := &Conn{
		R:        wire.NewReader(rw, 32<<10, p.conf().MaxMessage),
		W:        wire.NewServerWriter(hw, 32<<10),
		PID:      h.PID,
		Secret:   h.SecretKey,
		Params:   h.ParameterStatuses,
		Prepared: make(map[string]uint64),
		node:     p.node,
		nc:       h.Conn,
		created:  now,
		lastUsed: now,
		pool:     p,
	}
	hw.c = c
	_, c.ReportsPath = h.ParameterStatuses["search_path"]
	return c, nil
}

func (p *Pool) expired(c *Conn, now time.Time) bool {
	return p.conf().MaxLifetime > 0 && now.Sub(c.created) > p.conf().MaxLifetime
}

// Release returns a connection checked out with Acquire. Broken or expired
// connections are closed.
func (p *Pool) Release(c *Conn) {
	now := time.Now()
	if c.Broken() || p.expired(c, now) || c.W.Buffered() > 0 || c.R.Buffered() > 0 {
		p.discard(c)
		return
	}
	c.lastUsed = now
	p.mu.Lock()
	if p.closed || p.total > p.conf().MaxSize {
		// Closed, or shrunk by SetConfig: this connection is one too many.
		p.mu.Unlock()
		p.discard(c)
		return
	}
	if p.waiters.len() > 0 {
		w := p.waiters.next(now, p.conf().FairAfter)
		p.mu.Unlock()
		w <- handoff{c: c}
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// discard closes c and frees its slot.
func (p *Pool) discard(c *Conn) {
	c.broken.Store(true)
	c.nc.Close()
	p.closedN.Add(1)
	p.freeSlot()
}

// freeSlot gives a freed slot to a waiter or decrements the total (always
// when SetConfig shrank the pool below its total).
func (p *Pool) freeSlot() {
	p.mu.Lock()
	if p.waiters.len() > 0 && !p.closed && p.total <= p.conf().MaxSize {
		w := p.waiters.pop()
		p.mu.Unlock()
		w <- handoff{}
		return
	}
	p.total--
	p.mu.Unlock()
}

func (p *Pool) maintain() {
	defer close(p.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var drop []*Conn
		p.mu.Lock()
		keep := p.idle[:0]
		for i, c := range p.idle {
			old := p.conf().IdleTimeout > 0 && now.Sub(c.lastUsed) > p.conf().IdleTimeout && len(p.idle)-i > p.conf().MinIdle
			if old || p.expired(c, now) || c.Broken() {
				drop = append(drop, c)
			} else {
				keep = append(keep, c)
			}
		}
		p.idle = keep
		need := 0
		if p.conf().MinIdle > len(p.idle) && p.total < p.conf().MaxSize {
			need = min(p.conf().MinIdle-len(p.idle), p.conf().MaxSize-p.total)
			p.total += need
		}
		p.mu.Unlock()
		for _, c := range drop {
			p.discard(c)
		}
		for i := 0; i < need; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), p.conf().ConnectTimeout)
			c, err := p.open(ctx)
			cancel()
			if err != nil {
				for j := i + 1; j < need; j++ {
					p.freeSlot()
				}
				break
			}
			p.Release(c)
		}
	}
}

// Stats returns counters and sizes.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	s := Stats{Node: p.node, Total: p.total, Idle: len(p.idle), Waiting: p.waiters.len(), MaxSize: p.conf().MaxSize}
	p.mu.Unlock()
	s.InUse = s.Total - s.Idle
	s.Acquires, s.Waits, s.WaitTimeouts = p.acquires.Load(), p.waits.Load(), p.waitTimeouts.Load()
	s.ConnectErrs, s.Opened, s.Closed = p.connectErrs.Load(), p.opened.Load(), p.closedN.Load()
	return s
}

// Close closes idle connections and refuses new checkouts; connections still
// checked out are closed when released.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	idle := p.idle
	p.idle = nil
	waiters := p.waiters.drain()
	if p.expiry != nil {
		p.expiry.Stop()
	}
	p.mu.Unlock()
	for _, w := range waiters {
		w <- handoff{err: ErrClosed}
	}
	close(p.stop)
	<-p.done
	for _, c := range idle {
		p.discard(c)
	}
}
