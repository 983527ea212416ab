package router

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// loop serves the client's messages until it terminates or fails.
func (ss *session) loop() error {
	idle, idleTxn := ss.srv.cfg.ClientIdleTimeout, ss.srv.cfg.IdleInTransactionTimeout
	armed := false   // a read deadline is set on the client connection
	var dl time.Time // the client connection's read deadline
	inTxn := false   // the client is waited for inside a transaction
	// Inside a transaction the deadline of an earlier wait is kept when it
	// comes no later than this wait's own (waitEnd): a read it ends too
	// early is read again with waitEnd (below). Setting a deadline is a
	// runtime timer change, ~0.2 µs, once per statement of a transaction
	// block before. Not while the backend is watched (session mode,
	// LISTEN), whose wakes end reads by deadline too.
	var waitEnd time.Time
	lazy := false

	// After a park (park_linux.go) the wait for the client is set up.
	back := ss.parkBack
	if back {
		armed, dl, ss.parkBack = ss.parkArmed, ss.parkDl, false
	}
	defer ss.leaveIdle()
	for {
		if back {
			back = false
		} else if ss.cr.Buffered() == 0 {
			if ss.be != nil && ss.be.W.Buffered() > 0 {
				// Before waiting for the client, what it sent so far goes
				// to the server, as on a direct connection: a Parse starts
				// statement_timeout and takes its locks when sent, not at
				// the client's Sync.
				if err := ss.be.W.Flush(); err != nil {
					ss.backendFailed(err)
				}
			}
			if ss.cw.Buffered() > 0 {
				ss.relayed = false
				if err := ss.cw.Flush(); err != nil {
					return fmt.Errorf("write to client: %w", err)
				}
			}
			inTxn = ss.inTxn() || (ss.unsynced && ss.be != nil) // an open pipeline holds its implicit transaction
			d := idle
			if inTxn {
				d = idleTxn
			}
			lazy = false
			if ss.unarmed { // copyIn cleared the deadline
				armed, ss.unarmed = false, false
			}
			switch {
			case d > 0:
				waitEnd = time.Now().Add(d)
				if lazy = inTxn && !ss.listening && ss.srv.cfg.PoolMode != PoolSession; lazy && armed && !dl.After(waitEnd) {
					break // the earlier wait's deadline stays (see waitEnd)
				}
				dl = waitEnd
				ss.nc.SetReadDeadline(dl)
				armed = true
			case armed:
				dl = time.Time{}
				ss.nc.SetReadDeadline(dl)
				armed = false
			}
		}
		var stopWatch func()
		watched := false
		// A session-mode backend is watched while its client is idle even
		// without LISTEN: a FATAL (pg_terminate_backend, shutdown) reaches
		// the client at once, as from a server, not at its next query.
		// The server's idle watch does it without a goroutine (armIdle);
		// where it cannot, a goroutine per wait does (watchNotifications).
		if ss.cr.Buffered() == 0 && (ss.listening || ss.srv.cfg.PoolMode == PoolSession) && ss.be != nil && len(ss.queue) == 0 && !ss.be.Broken() {
			if watched = ss.armIdle(); !watched {
				stopWatch = ss.watchNotifications()
			}
		}
		if ss.cr.Buffered() == 0 && stopWatch == nil {
			// Waiting for the client: its read and write buffers go back
			// to pools meanwhile, so that idle clients hold none.
			ss.cr.ReleaseIdle()
			ss.putWriter()
		}
		// A client idle between transactions, holding nothing on a backend
		// and sending nothing, may park (park_linux.go). TLS clients do
		// not: crypto/tls may hold a record read in part, which the
		// socket's readiness would not show. Session-mode clients park
		// while they hold no backend (before their first statement): the
		// notification TestHostileIdleWakeBehindReady once lost with them
		// parked was the test's (wake13).
		idleRead := !inTxn && ss.be == nil && stopWatch == nil && !ss.tls && len(ss.queue) == 0 && ss.cw == nil && ss.cr.Quiet() && ss.readIdle()
		typ, body, err := ss.cr.ReadMessage()
		if idleRead && ss.readWoken(dl) && isTimeout(err) {
			// The sweeper ended the read: the client has been idle a while.
			if ss.cr.Quiet() {
				ss.parkDl, ss.parkArmed = dl, armed
				return errParked
			}
			typ, body, err = ss.cr.ReadMessage() // part of a message came
		}
		for watched && ss.disarmIdle(dl) && isTimeout(err) {
			// The backend spoke while the client was idle (the deadline
			// was the idle watch's). A message the client sent meanwhile
			// goes first: the backend's wait for the normal flow.
			ss.takeWriter()
			if err := ss.relayIdle(); err != nil {
				return err
			}
			watched = ss.be != nil && !ss.be.Broken() && ss.armIdle()
			if ss.cr.Buffered() == 0 {
				ss.cr.ReleaseIdle()
			}
			ss.putWriter()
			typ, body, err = ss.cr.ReadMessage()
		}
		for err != nil && lazy && dl.Before(waitEnd) && isTimeout(err) && time.Now().Before(waitEnd) {
			// An earlier wait's deadline (see waitEnd): not this wait's
			// timeout. wire.Reader goes on with a message cut by it.
			dl = waitEnd
			ss.nc.SetReadDeadline(dl)
			typ, body, err = ss.cr.ReadMessage()
		}
		ss.takeWriter()
		if stopWatch != nil {
			stopWatch()
		}
		if err != nil {
			var tl *wire.TooLargeError
			var ne net.Error
			var me *wire.MemoryError
			if errors.As(err, &me) && !isCopyMessage(typ) {
				// The message was skipped: fail it as a server would.
				if ss.skipToSync {
					continue
				}
				if err := ss.localError(memoryError(me), typ != wire.MsgQuery); err != nil {
					return err
				}
				continue
			}
			switch {
			case errors.As(err, &me):
				// Part of a COPY already on its way to the server.
				ss.drainSyncs()
				ss.sendError(memoryError(me), "FATAL")
			case errors.As(err, &tl):
				ss.drainSyncs()
				ss.sendFatal("08P01", fmt.Sprintf("message too large: %v", tl))
			case errors.Is(err, wire.ErrMalformed):
				ss.drainSyncs()
				ss.sendFatal("08P01", fmt.Sprintf("invalid message: %v", err))
			case errors.As(err, &ne) && ne.Timeout() && inTxn:
				ss.srv.log.Info("client idle in transaction too long", "session", ss.id, "user", ss.user, "timeout", idleTxn)
				ss.endIdleTxn()
				ss.cw.Write(wire.AppendError(ss.out[:0], &wire.Error{Severity: "FATAL", Code: "25P03",
					Message: "terminating connection due to idle-in-transaction timeout",
					Hint:    fmt.Sprintf("The transaction was rolled back: the router ends clients idle inside a transaction for %s (idle_in_transaction_timeout).", idleTxn)}))
				ss.cw.Flush()
				return errors.New("idle in transaction timeout")
			case errors.As(err, &ne) && ne.Timeout():
				ss.sendFatal("57P05", "terminating connection due to idle timeout")
			case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
				return nil
			}
			return err
		}
		if ss.skipToSync && typ != wire.MsgSync {
			continue
		}
		var werr *wire.Error
		switch typ {
		case wire.MsgQuery:
			werr = ss.onQuery(body)
		case wire.MsgParse:
			werr = ss.onParse(body)
		case wire.MsgBind:
			was := ss.beginPortal
			werr = ss.onBind(body)
			if ss.beginPortal != was && werr == nil {
				ss.undoBeginPortalAtSkip(was)
			}
		case wire.MsgDescribe:
			werr = ss.onDescribe(body)
		case wire.MsgExecute:
			werr = ss.onExecute(body)
		case wire.MsgClose:
			werr = ss.onClose(body)
		case wire.MsgSync:
			werr = ss.onSync(body)
		case wire.MsgFlush:
			if ss.be != nil {
				ss.be.W.Write(wire.FlushMsg)
			}
			if err := ss.drain(true); err != nil {
				return err
			}
		case wire.MsgTerminate:
			return nil
		case wire.MsgFunctionCall:
			// libpq's large-object API (PQfn). Large objects belong to the
			// database, not to a shard: refused as a statement would be.
			werr = &wire.Error{Severity: "ERROR", Code: "0A000",
				Message: "the function call protocol (large objects through libpq's lo_* functions) is not supported by pgtenant",
				Hint:    "Large objects live outside the tenant's shard schema: store the data in a bytea column."}
		case wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			// COPY data sent ahead of the server's CopyInResponse (pgconn
			// streams right after the Query) goes to the backend; without a
			// backend it is ignored, as the server does.
			if ss.copyDiscard {
				ss.copyDiscard = typ == wire.MsgCopyData // the rest of a COPY the server ended
				continue
			}
			if ss.be != nil {
				ss.be.W.WriteFrame(typ, body)
				if typ == wire.MsgCopyData && ss.cr.Buffered() == 0 && ss.syncs > 0 {
					// Before waiting for more of the client's data: has the
					// server answered the COPY (CopyInResponse, or an error)?
					ss.copyStreaming = true
					if ss.be.W.Flush() == nil && (ss.be.R.Buffered() > 0 || ss.be.Readable()) {
						if err := ss.drain(false); err != nil {
							return err
						}
						if ss.copyStreaming {
							// The COPY failed before it began: drop the
							// rest of its data, as the server ignores it.
							ss.copyStreaming, ss.copyDiscard = false, true
						}
					}
				}
				if typ != wire.MsgCopyData {
					ss.copyStreaming = false
					ss.markCopyDone()
					if ss.cr.Buffered() == 0 {
						if err := ss.drain(false); err != nil {
							return err
						}
					}
				}
			}
		default:
			ss.sendFatal("08P01", fmt.Sprintf("invalid frontend message type %q", typ))
			return fmt.Errorf("invalid message type %q", typ)
		}
		if ss.closing {
			return errBackendFatal
		}
		if ss.clientErr != nil {
			return ss.clientErr // see clientFailed
		}
		if werr != nil {
			if werr.Severity == "FATAL" {
				ss.drainSyncs()
				ss.sendFatal(werr.Code, werr.Message)
				return werr
			}
			if err := ss.localError(werr, typ != wire.MsgQuery && typ != wire.MsgFunctionCall); err != nil {
				return err
			}
		}
	}
}

// clientWriterSize is the size of a client connection's write buffer.
const clientWriterSize = 32 << 10

// clientWriters holds the write buffers of clients the router waits for
// (see putWriter).
var clientWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, clientWriterSize) }}

// putWriter gives the client's write buffer, flushed, back to the pool while
// the session waits for the client; takeWriter takes one again. Only the
// session's goroutine uses ss.cw in between (the notification watcher runs
// with the buffer kept).
func (ss *session) putWriter() {
	if ss.cw == nil || ss.cw.Buffered() > 0 {
		return
	}
	ss.cw.Reset(nil)
	clientWriters.Put(ss.cw)
	ss.cw = nil
}

// takeWriter gives the session a client write buffer again after putWriter.
func (ss *session) takeWriter() {
	if ss.cw != nil {
		return
	}
	w := clientWriters.Get().(*bufio.Writer)
	w.Reset(ss.cwTo)
	ss.cw = w
}

// isCopyMessage reports whether typ is CopyData, CopyDone or CopyFail.
func isCopyMessage(typ byte) bool {
	return typ == wire.MsgCopyData || typ == wire.MsgCopyDone || typ == wire.MsgCopyFail
}

// memoryError is the error for a client message that found no room in the
// router's budget for large messages.
func memoryError(e *wire.MemoryError) *wire.Error {
	return &wire.Error{Code: "53200", Message: "out of memory for a large message in the router", Detail: e.Error(),
		Hint: "Large messages of other clients hold the router's memory for messages: retry later, send less per message, or raise router.max_message_memory (--max-message-memory)."}
}

// sendError sends werr with severity sev and flushes.
func (ss *session) sendError(werr *wire.Error, sev string) {
	e := *werr
	e.Severity = sev
	ss.cw.Write(wire.AppendError(ss.out[:0], &e))
	ss.cw.Flush()
}

// markCopyDone attributes a CopyDone or CopyFail the client sent ahead of
// the server's CopyInResponse to the oldest client Query or Execute still
// waiting for its answer that has none yet. One whose statement already
// failed (COPY into a missing table while the client streams) was ignored
// by the server, as outside COPY it ignores such messages; it must not
// count for a later COPY, which would then never read its data.
func (ss *session) markCopyDone() {
	for i := range ss.queue {
		if e := &ss.queue[i]; (e.kind == eQuery || e.kind == eExec) && !e.swallow && !e.copyDone {
			e.copyDone = true
			for j := i + 1; j < len(ss.queue) && ss.queue[j].kind == eSync; j++ {
				ss.queue[j].inCopy = true
			}
			return
		}
	}
}

func (ss *session) sendFatal(code, msg string) {
	ss.cw.Write(wire.AppendError(ss.out[:0], &wire.Error{Severity: "FATAL", Code: code, Message: msg}))
	ss.cw.Flush()
}

// unsyncedPending reports whether messages sent to the backend after the
// last queued Sync (or Query) still await answers: the server runs them in
// an implicit transaction that only a Sync ends.
func (ss *session) unsyncedPending() bool {
	for i := len(ss.queue) - 1; i >= 0; i-- {
		switch ss.queue[i].kind {
		case eSync, eQuery, eSynthRFQ:
			return false
		case eSynth:
		default:
			return true
		}
	}
	return false
}

// txnThenMoreError refuses, in transaction pool mode, a Query that ends the
// transaction it runs in and goes on with more statements: the router sets
// the shard for the transaction only, and the backend may return to the
// pool when it ends.
func txnThenMoreError() *wire.Error {
	return &wire.Error{Code: "0A000", Message: "a query cannot end this transaction and go on with more statements",
		Hint: "In transaction pool mode send COMMIT or ROLLBACK as the last statement of a query, or as a query of its own."}
}

// reservedSetError refuses SET or RESET of a setting the router owns.
func reservedSetError(name string) *wire.Error {
	if name == "search_path" {
		return &wire.Error{Code: "0A000", Message: `setting "search_path" is managed by pgtenant here`,
			Hint: "The router sets search_path to the tenant's shard schema. A router in session pool mode takes a client's own, set with SET search_path, RESET search_path or SELECT set_config('search_path', v, false) as a query of its own " +
				"(not among other statements of one query: it follows the path query by query, and after a RESET sets the shard's path again before the next query, which it cannot do between the statements of one); in transaction pool mode the backend is shared and it cannot."}
	}
	return &wire.Error{Code: "0A000", Message: fmt.Sprintf("setting %q is managed by pgtenant", name),
		Hint: "Select the tenant with SET pgtenant.tenant; the router sets search_path and pgtenant.tenant_id itself."}
}

// abortStmt names the statement whose failing Parse aborts a pipeline's
// implicit transaction (localError); it is never created.
const abortStmt = "pgtenant_abort"

// localError reports an error the router found itself, after the
// responses to earlier messages. Inside a transaction the transaction is
// rolled back and the client sees it as aborted.
func (ss *session) localError(werr *wire.Error, extended bool) error {
	// A COPY FROM STDIN that an earlier message starts gets no data from
	// the client, which sent this message instead (see copyRefuse).
	ss.copyRefuse = true
	defer func() { ss.copyRefuse = false }()
	if extended && ss.be != nil && ss.unsyncedPending() {
		// Should an earlier message of this pipeline fail at the server,
		// the server skips everything up to Sync, this message too: no
		// error of the router's then (a round trip, on this error path
		// only; as onQuery learns it).
		ss.be.W.Write(wire.FlushMsg)
		if err := ss.drain(true); err != nil {
			return err
		}
		if ss.skipToSync {
			return nil
		}
	}
	if ss.be != nil && (ss.unsyncedPending() || ss.unsynced) {
		// Earlier messages of this batch went to the server (answered
		// already, after a Flush, or not): end them as an error there
		// would, rolling their implicit transaction back (a Parse that
		// fails, its error kept from the client), then Sync.
		ss.out = wire.AppendParse(ss.out[:0], abortStmt, "pgtenant: abort", []byte{0, 0})
		ss.be.W.WriteFrame(wire.MsgParse, ss.out)
		ss.push(expect{kind: eParse, swallow: true, abort: true, name: abortStmt})
		ss.be.W.Write(wire.SyncMsg)
		ss.push(expect{kind: eSync, swallow: true})
	}
	if err := ss.drain(false); err != nil {
		return err
	}
	if !ss.backendPending() {
		// Answers the router made for earlier messages come first.
		if err := ss.drain(true); err != nil {
			return err
		}
	}
	ss.srv.m.Errors.WithLabelValues("router", sqlstateClass(werr.Code)).Inc()
	ss.cw.Write(wire.AppendError(ss.out[:0], werr))
	if ss.inTxn() {
		if ss.be != nil {
			if ss.pendingBegin == "" { // (a deferred BEGIN left nothing to roll back)
				ss.be.W.Write(wire.AppendQuery(ss.out[:0], "ROLLBACK"))
				ss.push(expect{kind: eQuery, swallow: true})
				if err := ss.drain(false); err != nil {
					return err
				}
			}
			if ss.be != nil && ss.srv.cfg.PoolMode == PoolSession {
				// Not reset with DISCARD ALL (see session.end): the next
				// client must not get what this one left on it.
				ss.be.MarkBroken()
			}
			ss.releaseBackend()
		}
		ss.pendingBegin = ""
		ss.localTenant = ""
		ss.failed = true
	}
	if extended {
		ss.skipToSync = true
		return nil
	}
	ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], ss.localStatus()))
	return nil
}

// reply sends a locally produced command result and ReadyForQuery.
func (ss *session) reply(tag string, notice *wire.Error) *wire.Error {
	if err := ss.drainSyncs(); err != nil {
		return ss.clientFailed(err)
	}
	if notice != nil {
		ss.cw.Write(wire.AppendError(ss.out[:0], notice))
	}
	ss.cw.Write(wire.AppendCommandComplete(ss.out[:0], tag))
	if ss.midString {
		return nil // the rest of the query string follows
	}
	st := ss.localStatus()
	if st == 'I' {
		ss.localTenant = "" // the implicit transaction ended
	}
	ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], st))
	return nil
}

func noTxnWarning() *wire.Error {
	return &wire.Error{Severity: "WARNING", Code: "25P01", Message: "there is no transaction in progress"}
}

func abortedError() *wire.Error {
	return &wire.Error{Code: "25P02", Message: "current transaction is aborted, commands ignored until end of transaction block"}
}

// setTenant applies SET [LOCAL] pgtenant.tenant = t.
func (ss *session) setTenant(t string, local bool) *wire.Error {
	if e := checkTenantID(t); e != nil {
		return e
	}
	m, shard, e := ss.knownTenant(t)
	if e != nil {
		return e
	}
	if local {
		if ss.be != nil && ss.status != 'I' && ss.beTenant != t && ss.beTenant != anyTenant && ss.beTenant != descTenant {
			return &wire.Error{Code: "25001", Message: fmt.Sprintf("this transaction is bound to tenant %q; it cannot switch to tenant %q", ss.beTenant, t),
				Hint: "COMMIT or ROLLBACK before switching tenants: one transaction runs on one shard."}
		}
		ss.localTenant = t
		ss.localMap, ss.localShard = m, int32(shard)
		return nil
	}
	ss.tenant = t
	ss.setView()
	return nil
}

// relayIdle relays what the session-mode backend sent while the client was
// idle (see idleWatch), as watchNotifications does: notifications, notices
// and parameter changes; a FATAL error ends the session (errBackendFatal),
// as the server closes the connection after it. Anything else, or a read
// that fails, marks the backend broken.
func (ss *session) relayIdle() error {
	be := ss.be
	for be.R.MessageBuffered() || be.Readable() {
		typ, body, err := be.R.ReadMessage()
		if err != nil {
			be.MarkBroken()
			break
		}
		switch typ {
		case wire.MsgNotification, wire.MsgNotice, wire.MsgParamStatus:
			wire.WriteFrame(ss.cw, typ, body)
			continue
		case wire.MsgErrorResponse:
			return ss.backendFatal(body)
		}
		be.MarkBroken()
		break
	}
	if err := ss.cw.Flush(); err != nil {
		return fmt.Errorf("write to client: %w", err)
	}
	return nil
}

// isTimeout reports whether err is a deadline's.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// watchNotifications relays what a session-mode backend sends while the
// client is idle (notifications from LISTEN, notices, parameter changes)
// until the returned function is called. Only the watcher touches the client
// writer until then.
func (ss *session) watchNotifications() func() {
	be := ss.be
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			typ, body, err := be.R.ReadMessage()
			if err != nil {
				var ne net.Error
				if !errors.As(err, &ne) || !ne.Timeout() {
					be.MarkBroken()
				}
				return
			}
			switch typ {
			case wire.MsgNotification, wire.MsgNotice, wire.MsgParamStatus:
				wire.WriteFrame(ss.cw, typ, body)
				if ss.cw.Flush() != nil {
					return
				}
			case wire.MsgErrorResponse:
				// A FATAL error (pg_terminate_backend, shutdown): relayed,
				// then the client's connection closes, as with a server.
				be.MarkBroken()
				wire.WriteFrame(ss.cw, typ, body)
				ss.cw.Flush()
				ss.nc.Close()
				return
			default:
				be.MarkBroken()
				return
			}
		}
	}()
	return func() {
		be.SetDeadline(time.Now())
		<-done
		be.SetDeadline(time.Time{})
	}
}

// setConfigParams is the ParameterDescription of a set_config statement
// the router answers: its $1 (if any) with the type the client gave, else text.
func setConfigParams(def *stmtDef) []byte {
	if def.info.param == 0 {
		return noParams
	}
	oid := uint32(25)
	if t := def.types; len(t) >= 6 && binary.BigEndian.Uint16(t) >= 1 {
		if o := binary.BigEndian.Uint32(t[2:]); o != 0 {
			oid = o
		}
	}
	n := max(def.info.param, 1)
	body := binary.BigEndian.AppendUint16(nil, uint16(n))
	for i := 1; i <= n; i++ {
		o := uint32(25)
		if i == 1 {
			o = oid
		}
		body = binary.BigEndian.AppendUint32(body, o)
	}
	return wire.Frame(nil, wire.MsgParamDesc, body)
}
