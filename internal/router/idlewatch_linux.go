//go:build linux

package router

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// idleWatch wakes a session-mode session whose backend sends something
// (a notification, a notice, a FATAL error) while the session waits for its
// client, without a goroutine per session or per round trip: one epoll set
// per Server holds the held backends' sockets, each armed (EPOLLONESHOT) only
// while its session waits for the client, and one goroutine waits for the set
// through Go's poller (an epoll descriptor is itself pollable). A backend
// that becomes readable then ends its session's client read with a deadline
// in the past; the session relays what the backend sent and waits again
// (session.relayIdle). Go's poller cannot wait for two sockets in one
// goroutine; the set does, and the session goroutine's wait stays the plain
// read of its client. Per round trip this costs two epoll_ctl calls (arm
// before the client's read, disarm after it) and no allocation.
type idleWatch struct {
	epfd   int
	f      *os.File // epfd in Go's poller
	rc     syscall.RawConn
	waitFn func(fd uintptr) bool
	evs    [64]syscall.EpollEvent
	done   chan struct{}
	// stop ends the sweeper (park_linux.go), which closes swept.
	stop, swept chan struct{}

	mu   sync.Mutex
	sess map[uint64]*session // by session id, from the first arm to the session's end
	// parked are the clients parked without a goroutine, by session id
	// (park_linux.go).
	parked map[uint64]*session
}

// idleArm is a session's state in the server's idleWatch.
type idleArm struct {
	mu    sync.Mutex
	state uint8 // idleOff, idleArmed, idleWoken (under mu)
	reg   bool  // the session is in idleWatch.sess
	// For ctl (RawConn.Control's callback, made once: a closure per call
	// would allocate): the event to set and the result.
	ctl   func(fd uintptr)
	epfd  int
	ev    syscall.EpollEvent
	errno syscall.Errno
}

const (
	idleOff uint8 = iota
	idleArmed
	idleWoken
)

// longAgo is a deadline in the past: it ends a read at once.
var longAgo = time.Unix(1, 0)

func newIdleWatch() (*idleWatch, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create the idle watch's epoll set: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("idle watch's epoll set non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pgtenant-idle-watch")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("idle watch's epoll set: %w", err)
	}
	w := &idleWatch{epfd: fd, f: f, rc: rc, done: make(chan struct{}), sess: map[uint64]*session{}, parked: map[uint64]*session{},
		stop: make(chan struct{}), swept: make(chan struct{})}
	w.waitFn = w.collect
	go w.run()
	return w, nil
}

// run waits for the set's events until close.
func (w *idleWatch) run() {
	defer close(w.done)
	for {
		if err := w.rc.Read(w.waitFn); err != nil {
			return // closed
		}
	}
}

// close stops the watch and waits for its goroutines.
func (w *idleWatch) close() {
	close(w.stop)
	<-w.swept
	w.f.Close()
	<-w.done
}

// collect is the RawConn.Read callback of run: it takes the ready events
// and wakes their sessions, then asks to wait (false).
func (w *idleWatch) collect(fd uintptr) bool {
	for {
		n, err := syscall.EpollWait(int(fd), w.evs[:], 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
		for i := range n {
			ev := &w.evs[i]
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id&parkedBit != 0 {
				w.unpark(id &^ parkedBit) // a parked client's socket (park_linux.go)
				continue
			}
			w.mu.Lock()
			ss := w.sess[id]
			w.mu.Unlock()
			if ss != nil {
				ss.wakeIdle()
			}
		}
	}
}

// idleWatch returns the server's idle watch, made at the first call; nil
// where it cannot be made (then sessions watch with a goroutine).
func (s *Server) idleWatch() *idleWatch {
	if w := s.iw.Load(); w != nil {
		return w
	}
	s.iwMu.Lock()
	defer s.iwMu.Unlock()
	if w := s.iw.Load(); w != nil || s.iwFailed || s.closed.Load() {
		return w
	}
	w, err := newIdleWatch()
	if err != nil {
		s.iwFailed = true
		s.log.Warn("idle watch unavailable: a goroutine per round trip watches session-mode backends", "err", err)
		return nil
	}
	s.iw.Store(w)
	go w.sweep(s)
	return w
}

// stopIdleWatch closes the idle watch, once every session has ended.
func (s *Server) stopIdleWatch() {
	s.iwMu.Lock()
	defer s.iwMu.Unlock()
	s.iwFailed = true // none after this
	if w := s.iw.Swap(nil); w != nil {
		w.close()
	}
}

// armIdle arms the server's idle watch for the session's backend before the
// session waits for its client; false when it cannot (the caller watches
// with watchNotifications). disarmIdle must follow the wait.
func (ss *session) armIdle() bool {
	w := ss.srv.idleWatch()
	if w == nil {
		return false
	}
	rc := ss.be.Socket()
	if rc == nil {
		return false
	}
	a := ss.idle
	if a == nil {
		a = new(idleArm) // session mode or LISTEN only: not in every session
		ss.idle = a
	}
	if !a.reg {
		w.mu.Lock()
		w.sess[ss.id] = ss
		w.mu.Unlock()
		a.reg, a.ctl, a.epfd = true, ss.idleCtl, w.epfd
		a.ev.Fd, a.ev.Pad = int32(uint32(ss.id)), int32(uint32(ss.id>>32))
	}
	// Armed before the event can come: a wake finds the state armed.
	a.mu.Lock()
	a.state = idleArmed
	a.mu.Unlock()
	a.ev.Events = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT
	if rc.Control(a.ctl) != nil || a.errno != 0 {
		a.mu.Lock()
		a.state = idleOff
		a.mu.Unlock()
		return false
	}
	if ss.be.R.MessageBuffered() {
		// Read with the last answer (the router read late: a notification
		// or a FATAL right behind a ReadyForQuery): the socket will not
		// say it, so wake now.
		ss.wakeIdle()
	}
	return true
}

// disarmIdle ends the watch armIdle began, once the client's read returned.
// It reports whether the watch woke the session; the client read deadline
// is then dl again.
func (ss *session) disarmIdle(dl time.Time) bool {
	a := ss.idle
	a.mu.Lock()
	woken := a.state == idleWoken
	a.state = idleOff
	a.mu.Unlock()
	if woken {
		ss.nc.SetReadDeadline(dl)
		return true // the one-shot event fired: nothing armed
	}
	// The server's answer to the client's next request must not fire it.
	if rc := ss.be.Socket(); rc != nil {
		a.ev.Events = syscall.EPOLLONESHOT // no events, not even a hang-up (one-shot disables it)
		rc.Control(a.ctl)
	}
	return false
}

// idleCtl sets the session's event for the backend socket fd in the idle
// watch's set (MOD, or ADD for a socket not there yet: a registration
// lasts as long as the socket, whoever holds it; its event names the last
// session that armed it).
func (ss *session) idleCtl(fd uintptr) {
	a := ss.idle
	_, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(a.epfd), syscall.EPOLL_CTL_MOD, fd, uintptr(unsafe.Pointer(&a.ev)), 0, 0)
	if e == syscall.ENOENT {
		_, _, e = syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(a.epfd), syscall.EPOLL_CTL_ADD, fd, uintptr(unsafe.Pointer(&a.ev)), 0, 0)
	}
	a.errno = e
}

// wakeIdle ends the armed session's client read (from the watch's
// goroutine). A wake may come late, for an event of an earlier wait: the
// session then finds nothing to relay and waits again.
func (ss *session) wakeIdle() {
	a := ss.idle
	a.mu.Lock()
	if a.state == idleArmed {
		a.state = idleWoken
		ss.nc.SetReadDeadline(longAgo)
	}
	a.mu.Unlock()
}

// leaveIdle takes the ended session out of the idle watch.
func (ss *session) leaveIdle() {
	if ss.idle == nil || !ss.idle.reg {
		return
	}
	if w := ss.srv.iw.Load(); w != nil {
		w.mu.Lock()
		delete(w.sess, ss.id)
		w.mu.Unlock()
	}
	ss.idle.reg = false
}
