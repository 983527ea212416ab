//go:build linux

package router

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// A client idle between transactions, holding no backend, is parked: its
// goroutine ends (with it the goroutine's stack, 8 KiB, most of what an
// idle client cost) and its socket waits in the server's idle watch's epoll
// set (idlewatch_linux.go), armed one-shot; when the client sends something
// or hangs up, the watch starts a goroutine that goes on with the session
// where it stopped (resume). Everything the session keeps lives in the
// session struct, not on the goroutine's stack, so parking loses nothing.
//
// Only clients idle for a while are parked, so that a busy client pays
// nothing per transaction but two atomic operations: the watch's sweeper
// looks at the sessions every parkTick, marks those waiting for their
// client in a parkable read (readIdle), and at its next look ends the read
// of those still waiting in the same read (a deadline in the past, as the
// idle watch wakes a session-mode client). The session then parks (loop
// returns errParked, run calls park). A client is thus parked after one to
// two ticks of silence.

// parkTick is the sweeper's period (see above).
const parkTick = 250 * time.Millisecond

// parkedBit marks a parked client's socket in the idle watch's events (the
// backend sockets of session-mode sessions have it clear): session ids
// never reach it.
const parkedBit = uint64(1) << 63

// A parkable read's states (parkState.state).
const (
	readOff    uint32 = iota // no parkable read
	readOn                   // the session waits for its client (readIdle)
	readSeen                 // ...and the sweeper saw it
	readKicked               // the sweeper ended the read
	readParked               // parked: no goroutine (park)
)

// parkState is a session's state in parking.
type parkState struct {
	state atomic.Uint32
	// mu orders the sweeper's kick (its deadline) with the session's end
	// of the read, and park with unpark.
	mu sync.Mutex
	// rc is the client socket, ev its event in the watch's set, in: the
	// socket is in the set (added at the first park, deleted at the end).
	rc    syscall.RawConn
	ev    syscall.EpollEvent
	in    bool
	timer *time.Timer // ends a park when the client's idle timeout is due
}

// readIdle marks the session as waiting for its client in a read it may
// park from; false when it cannot park (no idle watch).
func (ss *session) readIdle() bool {
	if ss.srv.iw.Load() == nil {
		return false
	}
	ss.pk.state.Store(readOn)
	return true
}

// readWoken ends what readIdle began, once the read returned: it reports
// whether the sweeper ended the read (the read's timeout is then its); the
// client read deadline is dl again.
func (ss *session) readWoken(dl time.Time) bool {
	p := &ss.pk
	if p.state.Swap(readOff) != readKicked {
		return false
	}
	p.mu.Lock() // the sweeper's deadline is set
	p.mu.Unlock()
	ss.nc.SetReadDeadline(dl)
	return true
}

// kickIdle is the sweeper's look at one session (see above).
func (ss *session) kickIdle() {
	p := &ss.pk
	if p.state.CompareAndSwap(readOn, readSeen) || p.state.Load() != readSeen {
		return
	}
	p.mu.Lock()
	if p.state.CompareAndSwap(readSeen, readKicked) {
		ss.nc.SetReadDeadline(longAgo)
	}
	p.mu.Unlock()
}

// sweep kicks the sessions idle in a parkable read every parkTick, until
// the watch closes.
func (w *idleWatch) sweep(s *Server) {
	defer close(w.swept)
	tick := parkTick
	if s.cfg.testParkTick > 0 {
		tick = s.cfg.testParkTick
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*session
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
		}
		// Looked at outside sessMu: a kick sets a deadline.
		s.sessMu.Lock()
		for _, ss := range s.sessions {
			if st := ss.pk.state.Load(); st == readOn || st == readSeen {
				batch = append(batch, ss)
			}
		}
		s.sessMu.Unlock()
		for i, ss := range batch {
			ss.kickIdle()
			batch[i] = nil
		}
		batch = batch[:0]
	}
}

// park parks the session, whose loop returned errParked: it reports
// whether it did, and then the calling goroutine must return at once
// without touching the session, which another goroutine may be running
// already. Otherwise the caller goes on with the loop.
func (ss *session) park(dl time.Time) bool {
	w := ss.srv.iw.Load()
	if w == nil {
		return false
	}
	p := &ss.pk
	if p.rc == nil {
		sc, ok := ss.nc.(syscall.Conn)
		if !ok {
			return false
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return false
		}
		p.rc = rc
		id := uint64(ss.id) | parkedBit
		p.ev.Fd, p.ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
	}
	// Scratch buffers of the last transaction go too (~0.3 KiB); the
	// queue is empty. So do the client's reader and its socket I/O (0.5
	// KiB, quiet: nothing buffered; made again by unparkIO) and the
	// context of the waits for a pool backend (acquireCtx makes another).
	ss.pre, ss.qbuf, ss.queue, ss.errBuf = nil, nil, nil, nil
	ss.cr, ss.cwTo = nil, nil
	ss.acqMu.Lock()
	if ss.acq != nil {
		ss.acqStop()
		ss.acq, ss.acqStop = nil, nil
	}
	ss.acqMu.Unlock()
	w.mu.Lock()
	w.parked[ss.id] = ss
	w.mu.Unlock()
	op := syscall.EPOLL_CTL_MOD
	p.mu.Lock()
	if !p.in {
		op = syscall.EPOLL_CTL_ADD
		p.in = true // before the epoll_ctl: once armed, the session is not ours
	}
	p.ev.Events = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT
	p.state.Store(readParked)
	ss.srv.m.ClientsParked.Inc()
	if !dl.IsZero() {
		// The client's idle timeout: unparked when due, its read then
		// times out at once (the deadline on the socket is dl).
		if p.timer == nil {
			p.timer = time.AfterFunc(time.Until(dl), ss.unpark)
		} else {
			p.timer.Reset(time.Until(dl))
		}
	}
	p.mu.Unlock()
	// From here a kill, and from the epoll_ctl on the watch, may resume
	// the session: what this goroutine looks at after it is local.
	var errno syscall.Errno
	epfd, ev, rc, m := w.epfd, &p.ev, p.rc, ss.srv.m
	err := rc.Control(func(fd uintptr) {
		_, _, errno = syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), uintptr(op), fd, uintptr(unsafe.Pointer(ev)), 0, 0)
	})
	if err == nil && errno == 0 {
		m.ClientParks.Inc()
		return true
	}
	// Not armed: the session is still ours, unless a kill unparked it.
	p.mu.Lock()
	mine := p.state.CompareAndSwap(readParked, readOff)
	if mine {
		m.ClientsParked.Dec()
	}
	if mine && p.timer != nil {
		p.timer.Stop()
	}
	if mine && op == syscall.EPOLL_CTL_ADD {
		p.in = false
	}
	p.mu.Unlock()
	if !mine {
		return true
	}
	w.mu.Lock()
	delete(w.parked, ss.id)
	w.mu.Unlock()
	ss.unparkIO()
	return false
}

// unparkIO makes again the client reader and socket I/O that park let go.
func (ss *session) unparkIO() {
	if ss.cr != nil {
		return
	}
	rio := wire.RawIO(ss.nc)
	ss.cr, ss.cwTo = ss.srv.clientReader(ss.ctx, rio), rio
	ss.cr.SetMax(ss.srv.cfg.MaxMessage)
}

// unpark starts a goroutine that goes on with the parked session (from
// the watch, the idle timeout's timer, or kill); nothing if it is not
// parked.
func (ss *session) unpark() {
	p := &ss.pk
	p.mu.Lock()
	if !p.state.CompareAndSwap(readParked, readOff) {
		p.mu.Unlock()
		return
	}
	ss.srv.m.ClientsParked.Dec()
	if p.timer != nil {
		p.timer.Stop()
	}
	p.mu.Unlock()
	if w := ss.srv.iw.Load(); w != nil {
		w.mu.Lock()
		delete(w.parked, ss.id)
		w.mu.Unlock()
	}
	go ss.resume()
}

// unpark unparks the session with id (a watch event).
func (w *idleWatch) unpark(id uint64) {
	w.mu.Lock()
	ss := w.parked[id]
	w.mu.Unlock()
	if ss != nil {
		ss.unpark()
	}
}

// parked reports whether the session is parked.
func (ss *session) parked() bool { return ss.pk.state.Load() == readParked }

// unwatchClient takes the ended session's socket out of the watch's set
// (closing it would too, but a socket still open must not stay there).
func (ss *session) unwatchClient() {
	p := &ss.pk
	if !p.in {
		return
	}
	p.in = false
	w := ss.srv.iw.Load()
	if w == nil {
		return
	}
	epfd := w.epfd
	p.rc.Control(func(fd uintptr) {
		syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(epfd), syscall.EPOLL_CTL_DEL, fd, 0, 0, 0)
	})
}
