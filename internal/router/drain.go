package router

import (
	"errors"
	"time"

	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// push queues an expected response.
func (ss *session) push(e expect) {
	switch e.kind {
	case eParse, eBind, eDescS, eDescP, eExec, eClose:
		ss.unsynced = true
	case eSync, eQuery:
		ss.unsynced = false
	}
	ss.queue = append(ss.queue, e)
	if cap(ss.queue) > cap(ss.qbuf) {
		ss.qbuf = ss.queue[:0:cap(ss.queue)]
	}
	if e.kind == eSync || e.kind == eQuery || e.kind == eSynthRFQ {
		ss.syncs++
		ss.syncsPushed++
	}
}

func (ss *session) pop() {
	e := ss.queue[0]
	if e.kind == eSync || e.kind == eQuery || e.kind == eSynthRFQ {
		ss.syncs--
		ss.syncsPopped++
	}
	ss.queue[0] = expect{}
	ss.queue = ss.queue[1:]
	if len(ss.queue) == 0 {
		ss.queue = ss.qbuf[:0]
		ss.synthFree = ss.synthBase // no queued message holds the space now
	}
}

// pushSynth queues msg, a message the router answers itself, made by
// appending to ss.synthFree: the space of the messages queued so far is
// used again once they are all answered (pop), so that answering a
// set_config of the tenant (pgbench -M extended's first statement in
// routerbench) allocates nothing. A message that outgrew the space keeps
// its own; the next ones get a larger space.
func (ss *session) pushSynth(msg []byte) {
	if cap(msg) != cap(ss.synthFree) {
		ss.synthBase = make([]byte, 0, max(512, 2*cap(ss.synthBase)))
		ss.synthFree = ss.synthBase
	} else {
		ss.synthFree = msg[len(msg):]
	}
	ss.push(expect{kind: eSynth, synth: msg[:len(msg):len(msg)]})
}

// drainSyncs relays responses up to the last queued ReadyForQuery.
func (ss *session) drainSyncs() error {
	if ss.syncs == 0 {
		return nil
	}
	return ss.drain(false)
}

// drain relays backend responses for queued messages: up to the last
// ReadyForQuery, or (all) every queued response (after a Flush).
func (ss *session) drain(all bool) error {
	for len(ss.queue) > 0 && (all || ss.syncs > 0) {
		e := &ss.queue[0]
		switch e.kind {
		case eSynth:
			ss.cw.Write(e.synth)
			ss.pop()
			continue
		case eSynthRFQ:
			st := ss.localStatus()
			if st == 'I' {
				ss.localTenant = "" // the implicit transaction ended
			}
			ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], st))
			ss.pop()
			continue
		}
		be := ss.be
		if be == nil {
			// The backend was lost: answer what is left.
			ss.lostBackend(nil)
			continue
		}
		clientFirst := !be.R.MessageBuffered() && ss.relayed && ss.cw.Buffered() > 0
		if be.W.Buffered() > 0 && (clientFirst || ss.held != nil) {
			if err := be.W.Flush(); err != nil {
				ss.backendFailed(err)
				continue
			}
		}
		if clientFirst {
			// Stream what the server sent so far before blocking on it;
			// messages the router made itself wait for company.
			ss.relayed = false
			if err := ss.cw.Flush(); err != nil {
				return err
			}
		}
		var typ byte
		var body []byte
		var err error
		if ss.held != nil {
			typ, body, ss.held = ss.held[0], ss.held[1:], nil
		} else {
			// What is buffered for the server goes first; when the server
			// had answered everything before, the read that would find
			// nothing before it answers is skipped (wire.ReadMessageAfter).
			typ, body, err = be.R.ReadMessageAfter(be.W)
		}
		if err != nil {
			ss.backendFailed(err)
			continue
		}
		if e.skip > 0 {
			// The answers of the router's statements ahead of the client's
			// in the same Query (see combined.go).
			switch typ {
			case wire.MsgRowDescription, wire.MsgDataRow:
				continue
			case wire.MsgCommandComplete:
				e.skip--
				continue
			case wire.MsgErrorResponse:
				e.skip = 0 // the whole Query failed: the client's error
			}
		}
		if e.posShift > 0 && (typ == wire.MsgErrorResponse || typ == wire.MsgNotice) {
			if nb, moved := shiftPosition(body, e.posShift, ss.errBuf); moved {
				body, ss.errBuf = nb, nb[:0]
			}
		}
		switch typ {
		case wire.MsgReadyForQuery:
			if len(body) == 1 {
				ss.status = body[0]
			}
			if ss.unlistenDone && ss.status != 'T' {
				// Committed ('I'), or the block failed ('E'): see noteUnlisten.
				ss.listening = ss.listening && ss.status != 'I'
				ss.unlistenDone = false
			}
			if e.kind != eSync && e.kind != eQuery {
				// Unexpected; relay and carry on.
				ss.relay(typ, body)
				continue
			}
			swallow := e.swallow
			ss.pop()
			if ss.localOpen && ss.status == 'I' {
				ss.localOpen = false
			}
			if ss.abortLeft && ss.syncsPopped > ss.abortLeftAt {
				ss.abortLeft = false // the status tells again
			}
			if ss.syncs == 0 && ss.status == 'I' && ss.syncsPopped > ss.pipeMarkAt {
				// Nothing of the pipeline is left to run (the Sync answered
				// came after whatever set the flags).
				ss.clientPortal, ss.setupEach, ss.txnEndBound = false, false, false
			}
			if ss.setupOpen {
				if ss.status == 'I' {
					ss.setupOpen = false // committed
				} else {
					ss.doubtSetup() // inside a transaction that may roll back
				}
			}
			if len(ss.txnSets) > 0 && ss.status == 'I' && ss.pendingBegin == "" {
				// (A statement run outside the client's deferred block, a
				// tenantless SET: its SETs wait for the block's end.)
				ss.endTxnSets(true)
			}
			if !swallow {
				if ss.pendingBegin != "" && ss.status == 'I' {
					// A statement run outside the deferred transaction.
					if ss.failed && !ss.backendPending() {
						// It failed (below): the block is aborted, as on a
						// server, and ends as localError ends one.
						ss.pendingBegin, ss.localTenant = "", ""
						if ss.srv.cfg.PoolMode == PoolSession {
							ss.be.MarkBroken()
							ss.releaseBackend()
						}
					}
					ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], ss.localStatus()))
				} else {
					ss.relay(typ, body)
					if ss.status == 'I' {
						ss.localTenant = ""
						ss.resetTenantAfterTxn()
					}
				}
			}
			if ss.status == 'I' && ss.srv.cfg.PoolMode == PoolTransaction && !ss.backendPending() {
				ss.releaseBackend()
			}
			continue
		case wire.MsgErrorResponse:
			if sev := wire.ErrorSeverity(body); sev == "FATAL" || sev == "PANIC" {
				return ss.backendFatal(body)
			}
			ss.unlistenDone = false // its transaction (or savepoint) is rolled back
			if e.name != "" && (e.kind == eBind || e.kind == eDescS) {
				if b := ss.stmtsDropped(e.name, body); b != nil {
					body = b // the router's error instead
				}
			}
			if (e.kind == eBind || e.kind == eDescS) && e.stmt != nil && staleAnswer(body) {
				// "cached plan must not change result type": see stale.go.
				ss.serverFoundStale(e)
			}
			if !e.abort {
				ss.srv.m.Errors.WithLabelValues(be.Node(), sqlstateClass(wire.ErrorCode(body))).Inc()
				ss.relay(typ, body)
				ss.use.errors++
				if ss.pendingBegin != "" {
					// Run outside the deferred BEGIN's block, which this
					// error aborts on a server (see the ReadyForQuery).
					ss.failed = true
				}
			}
			if e.reset {
				ss.resetFailed = true
			}
			if e.name == "setup" {
				be.Schema, be.Tenant, be.SessionSig = "\x00", "\x00", "\x00"
			}
			ss.doubtSetup() // the transaction with the setup is rolled back
			if len(ss.txnSets) > 0 && !ss.savepointHeld() {
				ss.endTxnSets(false) // and so are its SETs
			}
			if e.unnamedBind && bindRefusedEarly(wire.ErrorCode(body)) {
				ss.ownUnnamed = true // refused: the router's portal is still there
			}
			e.unnamedBind = false // (the skip below is of the messages after it)
			setupFailed := e.setup
			switch e.kind {
			case eQuery, eSync:
				// Query: ReadyForQuery follows.
			default:
				if (e.kind == eParse || (e.kind == eBind && e.setup)) && e.name != "" {
					// Not prepared after all, or gone: prepare it again next time.
					delete(be.Prepared, e.name)
				}
				if e.kind == eParse && e.name == "" {
					be.ForgetUnnamed() // the server has none now
				}
				// The server skips to Sync: so do we, undoing what the
				// skipped messages (and the refused one) did.
				n := 0
				for n < len(ss.queue) && ss.queue[n].kind != eSync && (ss.queue[n].kind != eQuery || ss.queue[n].swallow) && ss.queue[n].kind != eSynthRFQ {
					n++
				}
				for i := n - 1; i >= 0; i-- {
					ss.undoSkipped(i)
				}
				for ; n > 0; n-- {
					if ss.queue[0].unnamedBind {
						ss.ownUnnamed = true // skipped: the router's portal is still there
					}
					if q := &ss.queue[0]; q.kind == eQuery {
						// The router's own Query (a setup sent before the
						// client's next message of this pipeline): the
						// server skips it too, and the Sync's ReadyForQuery
						// is the client's. Waiting for the Query's hung.
						if q.name == "setup" {
							be.Schema, be.Tenant, be.SessionSig = "\x00", "\x00", "\x00"
						}
						if q.reset {
							ss.resetFailed = true
						}
					} else if q.kind == eParse {
						// Skipped by the server: not prepared there.
						if q.name != "" {
							delete(be.Prepared, q.name)
						} else {
							be.ForgetUnnamed() // the server's is another's
						}
					}
					ss.pop()
				}
				if setupFailed && len(ss.queue) > 0 && ss.queue[0].kind == eQuery {
					// The server ignores everything up to a Sync, the
					// client's Query too: the Sync's ReadyForQuery ends it.
					be.W.Write(wire.SyncMsg)
				}
				if len(ss.queue) == 0 {
					// No Sync sent yet (a pipeline with Flush): the server
					// ignores what the client sends until its Sync, and
					// answers nothing; the router must not wait for answers.
					ss.skipToSync = true
				}
			}
			continue
		case wire.MsgCopyInResponse:
			ss.relay(typ, body)
			if e.kind == eExec {
				ss.dropCopySyncs()
			}
			if e.copyDone {
				continue // the client already sent the whole COPY
			}
			if err := ss.copyIn(be); err != nil {
				return err
			}
			continue
		case wire.MsgCopyBothResp:
			be.Kill(errors.New("copy both is not supported"))
			continue
		case wire.MsgParamStatus:
			if werr := lexParamStatus(body); werr != nil {
				// The server now reads statement text otherwise than the
				// router checks it (lexsafe.go): end the session and close
				// the backend.
				return ss.backendFatal(wire.AppendError(nil, werr)[5:]) // the body, without type and length
			}
			if paramStatusHidden(body) && !ss.ownsPath() {
				// The router's own search_path (PostgreSQL 18 reports it),
				// or one set where the router cannot see it (a function's
				// set_config): then the backend's path is unknown, and the
				// next statement on it gets the shard's again.
				if be.Schema != "" && be.Schema != "\x00" && paramStatusValue(body) != ss.srv.searchPath(be.Schema) {
					be.Schema = "\x00"
				}
				continue
			}
			if ss.srv.cfg.PoolMode == PoolTransaction && paramStatusRole(body) {
				// A role changed where the router cannot see it (a
				// function's set_config('role', ...)): the next client
				// would run as that role.
				ss.dropBackend = true
			}
			ss.relay(typ, body)
			continue
		case wire.MsgNotice, wire.MsgNotification:
			if typ == wire.MsgNotification && ss.srv.cfg.PoolMode == PoolTransaction {
				// LISTEN is refused in transaction mode: the backend
				// listens by a LISTEN the router could not see (a DO
				// block, a function), perhaps another client's. Its
				// notifications are nobody's here; the backend is closed.
				ss.dropBackend = true
				continue
			}
			ss.relay(typ, body)
			continue
		}
		if e.kind == eDescS && e.stmt != nil {
			if h := noteShape(e, typ, body); h != 0 && e.name != "" { // see stale.go
				if _, ok := be.Prepared[e.name]; ok {
					be.Prepared[e.name] = h
				}
			}
		}
		if !e.swallow {
			ss.relay(typ, body)
			ss.use.note(typ, len(body))
		}
		if typ == wire.MsgCommandComplete {
			if e.kind == eQuery && !e.swallow {
				// The client's statement ran in the unnamed portal, and
				// dropped it. (Told by its answer: a statement failing
				// before it runs leaves the portal.)
				ss.beginPortal = false
			}
			if string(body) == "LISTEN\x00" {
				// However it came (a later statement of a Query, an
				// Execute): the session keeps this backend's tenant until
				// UNLISTEN * (see ensureBackend).
				ss.listening = true
			}
			if ss.listening { // else there is nothing to stop
				ss.noteUnlisten(e, body)
			}
			if len(e.prep) > 0 && string(body) == "PREPARE\x00" {
				ss.notePrepared(e.prep[0])
				e.prep = e.prep[1:]
			}
			spDone := false
			if e.msets != nil {
				spDone = ss.multiDone(e)
			}
			if e.set != nil {
				ss.setDone(e.set)
				e.set = nil
			} else if len(ss.txnSets) > 0 && string(body) == "ROLLBACK\x00" && !spDone {
				ss.endTxnSets(false)
			} else if len(ss.txnSets) > 0 && string(body) == "COMMIT\x00" {
				ss.endTxnSets(true) // kept should a later statement of the string fail
			}
		}
		done := false
		switch e.kind {
		case eParse:
			done = typ == wire.MsgParseComplete
		case eBind:
			done = typ == wire.MsgBindComplete
		case eClose:
			done = typ == wire.MsgCloseComplete
		case eDescS, eDescP:
			done = typ == wire.MsgRowDescription || typ == wire.MsgNoData
		case eExec:
			done = typ == wire.MsgCommandComplete || typ == wire.MsgEmptyQuery || typ == wire.MsgPortalSuspended
		}
		if done {
			ss.pop()
		}
	}
	return nil
}

// errBackendFatal ends a session whose backend reported a FATAL error.
var errBackendFatal = errors.New("the backend connection ended with a FATAL error")

// backendFatal relays a FATAL ErrorResponse (pg_terminate_backend, a server
// shutting down, an idle session timeout) and ends the session: the server
// closes the connection after it, and clients wait for that close (as
// node-postgres does) rather than for a ReadyForQuery that never comes.
func (ss *session) backendFatal(body []byte) error {
	be := ss.be
	ss.srv.m.Errors.WithLabelValues(be.Node(), sqlstateClass(wire.ErrorCode(body))).Inc()
	ss.srv.log.Info("backend connection ended", "session", ss.id, "node", be.Node(), "code", wire.ErrorCode(body), "err", wire.ErrorMessage(body))
	ss.relay(wire.MsgErrorResponse, body)
	be.MarkBroken()
	ss.releaseBackend()
	ss.status = 'I'
	clear(ss.queue)
	ss.queue = ss.qbuf[:0]
	ss.syncs = 0
	ss.closing = true
	ss.cw.Flush()
	return errBackendFatal
}

// resetTenantAfterTxn resets the session tenant when a transaction that
// ran on a tenant's shard has ended, if Config.ResetTenantAfterTransaction
// asks for it.
func (ss *session) resetTenantAfterTxn() {
	// shardUsed is set when a statement is executed on a tenant's shard
	// (Query or Bind), not for a Parse or Describe alone.
	if !ss.shardUsed {
		return
	}
	ss.shardUsed = false
	if !ss.srv.cfg.ResetTenantAfterTransaction || ss.tenant == ss.startTenant {
		return
	}
	ss.tenant = ss.startTenant
	ss.setView()
}

// backendPending reports whether any queued response must come from the backend.
func (ss *session) backendPending() bool {
	for i := range ss.queue {
		if k := ss.queue[i].kind; k != eSynth && k != eSynthRFQ {
			return true
		}
	}
	return false
}

func (ss *session) relay(typ byte, body []byte) {
	ss.relayed = true
	wire.WriteFrame(ss.cw, typ, body)
}

// dropCopySyncs forgets the Syncs sent behind an Execute that started COPY
// FROM STDIN before the client ended the COPY (libpq sends Execute, Sync,
// then the data, CopyDone and another Sync): the server ignores a Sync in
// COPY mode, so only the client's Sync after CopyDone or CopyFail is
// answered. Waiting for the first one's ReadyForQuery hung the session.
func (ss *session) dropCopySyncs() {
	n := 0
	for n+1 < len(ss.queue) {
		e := &ss.queue[n+1]
		if e.kind != eSync || e.swallow || (ss.queue[0].copyDone && !e.inCopy) {
			break
		}
		n++
	}
	if n == 0 {
		return
	}
	copy(ss.queue[1:], ss.queue[1+n:])
	for i := len(ss.queue) - n; i < len(ss.queue); i++ {
		ss.queue[i] = expect{}
	}
	ss.queue = ss.queue[:len(ss.queue)-n]
	ss.syncs -= n
	ss.syncsPopped += uint64(n)
	if len(ss.queue) == 1 {
		ss.unsynced = true // the COPY's implicit transaction waits for a Sync
	}
}

// copyIn relays CopyData from the client until CopyDone or CopyFail.
func (ss *session) copyIn(be *pool.Conn) error {
	if err := ss.cw.Flush(); err != nil {
		return err
	}
	// A COPY is not idle, however long it streams: no idle timeout
	// (loop sets it again for the next message).
	ss.nc.SetReadDeadline(time.Time{})
	ss.unarmed = true
	if ss.copyRefuse {
		be.W.WriteFrame(wire.MsgCopyFail, []byte("unexpected message during COPY\x00"))
		return nil
	}
	for {
		if ss.cr.Buffered() == 0 {
			if err := be.W.Flush(); err != nil {
				ss.backendFailed(err)
				return nil
			}
		}
		if ss.cr.Buffered() == 0 && (be.R.Buffered() > 0 || be.Readable()) {
			// The server spoke during COPY FROM STDIN: a notice, or an
			// error that ended the COPY (a bad row). An error goes to the
			// client now (drain relays it), not after the rest of its data,
			// which the router then drops (copyDiscard).
			typ, body, err := be.R.ReadMessage()
			if err != nil {
				ss.backendFailed(err)
				return nil
			}
			if typ == wire.MsgNotification && ss.srv.cfg.PoolMode == PoolTransaction {
				ss.dropBackend = true // see drain
				continue
			}
			if typ == wire.MsgNotice || typ == wire.MsgParamStatus || typ == wire.MsgNotification {
				ss.relay(typ, body)
				if err := ss.cw.Flush(); err != nil {
					return err
				}
				continue
			}
			ss.held = append(append(ss.held[:0], typ), body...)
			ss.copyDiscard, ss.copyStreaming = true, false
			return nil
		}
		typ, body, err := ss.cr.ReadMessage()
		if err != nil {
			be.MarkBroken()
			return err
		}
		switch typ {
		case wire.MsgCopyData, wire.MsgCopyDone, wire.MsgCopyFail:
			be.W.WriteFrame(typ, body)
			if typ != wire.MsgCopyData {
				ss.copyStreaming = false
				return nil
			}
		case wire.MsgFlush, wire.MsgSync:
			// Ignored by the server during COPY; do not forward.
		default:
			be.W.WriteFrame(wire.MsgCopyFail, []byte("unexpected message during COPY\x00"))
			return nil
		}
	}
}

// bindRefusedEarly reports whether a Bind that failed with SQLSTATE code
// was refused before the server made its portal (PostgreSQL's
// exec_bind_message: no such statement, wrong parameter count, aborted
// block), so that the unnamed portal it was to replace is still there. A
// later failure (parameter input, planning) has replaced it already.
func bindRefusedEarly(code string) bool {
	switch code {
	case "26000", "08P01", "25P02":
		return true
	}
	return false
}
