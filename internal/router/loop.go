package router

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
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
	defer ss.leaveIdle()
	for {
		if ss.cr.Buffered() == 0 {
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
			switch {
			case d > 0:
				dl = time.Now().Add(d)
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
		typ, body, err := ss.cr.ReadMessage()
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
			werr = ss.onBind(body)
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
			Hint: "The router sets search_path to the tenant's shard schema. A router in session pool mode takes a client's own, set with SET search_path, RESET search_path or SELECT set_config('search_path', v, false) as a statement of its own; in transaction pool mode the backend is shared and it cannot."}
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
			ss.be.W.Write(wire.AppendQuery(ss.out[:0], "ROLLBACK"))
			ss.push(expect{kind: eQuery, swallow: true})
			if err := ss.drain(false); err != nil {
				return err
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
	if e := ss.knownTenant(t); e != nil {
		return e
	}
	if local {
		if ss.be != nil && ss.status != 'I' && ss.beTenant != t && ss.beTenant != anyTenant && ss.beTenant != descTenant {
			return &wire.Error{Code: "25001", Message: fmt.Sprintf("this transaction is bound to tenant %q; it cannot switch to tenant %q", ss.beTenant, t),
				Hint: "COMMIT or ROLLBACK before switching tenants: one transaction runs on one shard."}
		}
		ss.localTenant = t
		return nil
	}
	ss.tenant = t
	ss.setView()
	return nil
}

// onQuery handles a simple-protocol Query.
func (ss *session) onQuery(body []byte) *wire.Error {
	text, err := wire.QueryText(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	sql := ss.cr.String(text) // no copy of a large query
	if ss.unsynced && ss.be != nil && ss.backendPending() {
		// The client's Parse/Bind/Execute without a Sync precede this
		// Query. Should one of them fail, the server skips everything up
		// to the client's Sync, this Query too (no ReadyForQuery of its
		// own): learn that before the Query goes (a round trip, for this
		// rare mix only).
		ss.be.W.Write(wire.FlushMsg)
		if err := ss.drain(true); err != nil {
			return ss.clientFailed(err)
		}
		if ss.skipToSync {
			return nil
		}
	}
	ss.unnamed = nil // a simple Query drops the unnamed statement, as on the server
	if e := ss.checkAccess(sql); e != nil {
		return e
	}

	info := classify(sql)
	// The client's own Parse/Bind/Execute without a Sync, if any, precede
	// this Query as on a direct connection.
	clientUnsynced := ss.unsynced
	if ss.failed && ss.be == nil {
		if (info.kind == kCommit || info.kind == kRollback) && !info.multi {
			// The answers to a pipelined Sync before this still say the
			// transaction is aborted.
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			ss.failed = false
			return ss.reply("ROLLBACK", nil)
		}
		return abortedError()
	}
	var g *guardFinding
	if info.guardScan && !ss.pathStmt(&info) {
		g = guard(sql)
	}
	if e := ss.refuse(&info, g); e != nil {
		return e
	}
	if info.txnThenMore && ss.srv.cfg.PoolMode == PoolTransaction && ss.inTxn() {
		// Refused whether or not this transaction's settings are local, so
		// that the same query does not fail on one backend and run on
		// another.
		return txnThenMoreError()
	}
	if info.multi && ss.splitsFirst(&info) {
		return ss.onQueryParts(sql, &info)
	}
	if info.laterTenant {
		return &wire.Error{Code: "0A000", Message: "SET, RESET or SHOW of pgtenant.tenant after another statement of the same query",
			Hint: "Name the tenant at the start of the query string (SET pgtenant.tenant = 'id'; ...), or in a query of its own."}
	}
	if info.reservedSet && (info.kind == kSet || info.kind == kReset) && !ss.pathStmt(&info) {
		return reservedSetError(info.setName)
	}
	if info.op != opNone && info.op != opSetConfig {
		switch info.op {
		case opShow:
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			t := ss.localTenant
			if t == "" {
				t = ss.tenant
			}
			ss.cw.Write(wire.AppendTextRowDescription(ss.out[:0], tenantSetting))
			ss.cw.Write(wire.AppendTextDataRow(ss.out[:0], t))
			return ss.reply("SHOW", nil)
		case opSet, opSetLocal:
			local := info.op == opSetLocal
			if local && !ss.inTxn() && !ss.midString {
				return ss.reply("SET", &wire.Error{Severity: "WARNING", Code: "25P01", Message: "SET LOCAL can only be used in transaction blocks"})
			}
			if e := ss.setTenant(info.val, local); e != nil {
				return e
			}
			return ss.reply("SET", nil)
		case opReset:
			ss.tenant = ss.startTenant
			ss.setView()
			tag := "RESET"
			if info.kind == kSet {
				tag = "SET"
			}
			return ss.reply(tag, nil)
		}
	}
	if info.op == opSetConfig && info.param == 0 {
		if e := ss.setTenant(info.val, info.isLocal); e != nil {
			return e
		}
		if info.plainSetConfig {
			// Answered here: no backend round trip to select a tenant.
			if err := ss.drainSyncs(); err != nil {
				return ss.clientFailed(err)
			}
			ss.cw.Write(wire.AppendTextRowDescription(ss.out[:0], "set_config"))
			ss.cw.Write(wire.AppendTextDataRow(ss.out[:0], info.val))
			return ss.reply("SELECT 1", nil)
		}
	}
	var newSet *setting
	if !info.multi {
		switch info.kind {
		case kBegin:
			if ss.canDefer() {
				if e := checkTxnStart(sql); e != nil {
					return e // as the server would refuse it, before anything runs
				}
				if ss.pendingBegin != "" {
					return ss.reply("BEGIN", &wire.Error{Severity: "WARNING", Code: "25001", Message: "there is already a transaction in progress"})
				}
				ss.pendingBegin = sql
				return ss.reply("BEGIN", nil)
			}
		case kCommit, kRollback:
			if ss.be == nil || ss.pendingBegin != "" {
				tag := "COMMIT"
				if info.kind == kRollback {
					tag = "ROLLBACK"
				}
				if ss.pendingBegin == "" {
					return ss.reply(tag, noTxnWarning())
				}
				ss.pendingBegin, ss.localTenant = "", ""
				return ss.reply(tag, nil)
			}
		case kSet:
			if info.setName == "transaction" || (info.isLocal && ss.inTxn()) {
				if ss.pendingBegin != "" {
					if info.setName == "transaction" {
						// SET TRANSACTION, as the server's grammar has it
						// (SET LOCAL of a setting is not checked here).
						if e := checkTxnStart(sql); e != nil {
							return e
						}
					}
					ss.pendingBegin += ";" + sql
					return ss.reply("SET", nil)
				}
				break
			}
			if info.isLocal {
				if ss.be == nil {
					return ss.reply("SET", &wire.Error{Severity: "WARNING", Code: "25P01", Message: "SET LOCAL can only be used in transaction blocks"})
				}
				break
			}
			// Run on a backend, which checks it; kept when it succeeds.
			newSet = &setting{name: info.setName, stmt: sql}
			if info.setDefault && info.setName == "search_path" {
				newSet = &setting{name: info.setName, reset: true} // the router's path again
			}
		case kReset:
			if ss.be == nil {
				ss.reset(info.setName)
				return ss.reply("RESET", nil)
			}
			// Kept when the backend has run it (see setDone).
			newSet = &setting{name: info.setName, reset: true}
		case kListen:
			if ss.srv.cfg.PoolMode == PoolTransaction {
				return &wire.Error{Code: "0A000", Message: "LISTEN is not supported in transaction pool mode",
					Hint: "Connect to a router in session pool mode to use LISTEN/NOTIFY."}
			}
			ss.listening = true
		case kUnlisten:
			if ss.be == nil {
				return ss.reply("UNLISTEN", nil)
			}
			if ss.status == 'I' && strings.Contains(sql, "*") {
				ss.listening = false // the session may switch tenants again
			}
		case kDiscard:
			if (ss.be == nil || ss.status == 'I') && strings.Contains(strings.ToLower(sql), "all") {
				ss.listening = false
				ss.sets = nil
				ss.resig()
				ss.pathNext = 0 // the client's search_path is gone with the rest
				ss.deallocateAll()
				ss.unnamed = nil
				ss.sqlStmts = nil
				if ss.be == nil {
					return ss.reply("DISCARD ALL", nil)
				}
			}
		case kDeallocate:
			if tag, e, ok := ss.answerDeallocate(sql, &info); ok {
				if e != nil {
					return e
				}
				return ss.reply(tag, nil)
			}
		case kSelect:
			if info.pathSetConfig && !info.isLocal && ss.mayOwnPath() {
				newSet = &setting{name: "search_path", stmt: pathSetting(info.val)}
			}
		}
	}
	tenant := ss.pickTenant(&info)
	if tenant == "" {
		if !(ss.be != nil && ss.beTenant == anyTenant && ss.status != 'I') {
			if ok, e := ss.noShard(&info, sql); !ok {
				return e
			}
		}
		tenant = anyTenant
		if ss.be != nil && ss.status != 'I' {
			tenant = ss.beTenant
		}
	}
	ddlNote, e := ss.ddlCheck(&info, tenant)
	if e != nil {
		return e
	}
	deferred := ss.pendingBegin != ""
	if e := ss.ensureBackend(tenant); e != nil {
		return e
	}
	ss.noteShardUse(&info)
	if ss.status == 'E' && info.multi && (ss.setupDue || ss.setupEach) {
		// The setup would fail in the aborted transaction, and the
		// statements after its end would run without it.
		return txnThenMoreError()
	}
	// Inside a transaction block for sure: the deferred BEGIN just sent, or
	// one open with every answer read. Elsewhere nothing of the router's own
	// may precede the Query unsynced (see sendQuerySetup).
	inBlock := (deferred && ss.pendingBegin == "") || (ss.status != 'I' && !ss.backendPending())
	nPre := 0
	if inBlock {
		ss.sendSetup(&info, true)
	} else if nPre = ss.combinedSetup(&info, newSet); nPre == 0 {
		ss.sendQuerySetup(&info)
	}
	if ss.localOpen && info.txnThenMore {
		return txnThenMoreError()
	}
	ss.noteEnding(&info)
	be := ss.be
	ss.noteServerState(&info)
	ss.notePath(&info)
	if !inBlock && ss.unsynced && !clientUnsynced {
		// Statements of the router's own (noteEnding's) end with a Sync
		// of their own, for the reason given at sendQuerySetup.
		be.W.Write(wire.SyncMsg)
		ss.push(expect{kind: eSync, swallow: true})
	}
	if ddlNote != nil {
		ss.push(expect{kind: eSynth, synth: ddlNote})
	}
	if nPre > 0 {
		ss.writeCombinedQuery(body)
		ss.push(expect{kind: eQuery, skip: uint8(nPre), posShift: ss.prefixChars()})
	} else {
		be.W.WriteFrame(wire.MsgQuery, body)
		ss.push(expect{kind: eQuery, set: newSet, prep: ss.noteSQLStmts(g)})
	}
	if ss.cr.Buffered() == 0 || ss.syncs > 16 || ss.setupOpen || ss.localOpen || ss.resetDue() {
		if err := ss.drain(false); err != nil {
			return ss.clientFailed(err)
		}
	}
	return nil
}

// resetDue reports whether the session tenant may be reset when the
// transaction in progress ends (Config.ResetTenantAfterTransaction): its
// answer is then read before the client's next message is routed, so
// pipelined statements never race the reset.
func (ss *session) resetDue() bool {
	return ss.srv.cfg.ResetTenantAfterTransaction && ss.tenant != ss.startTenant
}

// noteShardUse notes a statement executed on the attached backend: one on
// a tenant's shard, other than naming the tenant, sets shardUsed.
func (ss *session) noteShardUse(info *stmtInfo) {
	if info.op == opNone && ss.beTenant != anyTenant && ss.beTenant != descTenant {
		ss.shardUsed = true
	}
}

// splitsFirst reports whether the first statement of a query string of
// several is one the router answers itself and the rest depends on: SET
// [LOCAL], RESET or SHOW of pgtenant.tenant, or a BEGIN it can defer that
// such a statement follows.
func (ss *session) splitsFirst(info *stmtInfo) bool {
	switch info.op {
	case opSet, opSetLocal, opReset, opShow:
		return true
	}
	return info.kind == kBegin && info.laterTenant && ss.canDefer() && !ss.failed
}

// onQueryParts runs a query string whose first statement the router
// answers itself (see splitsFirst): that statement, without a
// ReadyForQuery, then the rest of the string as a Query of its own, so a
// tenant it names applies to the rest (psql -c "SET pgtenant.tenant = 'x';
// SELECT ..."). SET LOCAL outside a transaction block lasts to the end of
// the string, as in the implicit transaction a server runs it in.
//
// Unlike on a server, a session SET of the tenant stays when a later
// statement of the string fails.
func (ss *session) onQueryParts(sql string, info *stmtInfo) *wire.Error {
	first, rest := strings.TrimRight(sql[:info.firstEnd-1], " \t\r\n\f\v"), sql[info.firstEnd:]
	inTxn := ss.inTxn()
	ss.midString = true
	werr := ss.onQuery(append([]byte(first), 0))
	ss.midString = false
	if werr != nil {
		return werr
	}
	werr = ss.onQuery(append([]byte(rest), 0))
	if !inTxn && !ss.inTxn() {
		// A SET LOCAL ends with the string: learn its end before the
		// client's next message is routed.
		if err := ss.drain(false); err != nil && werr == nil {
			werr = ss.clientFailed(err)
		}
		if werr != nil && !ss.inTxn() {
			ss.localTenant = ""
		}
	}
	return werr
}

// reset forgets a session setting (all of them for "all", the tenant
// included) as RESET does.
func (ss *session) reset(name string) {
	if name == "all" {
		ss.sets = nil
		ss.tenant = ss.startTenant
		ss.setView()
	} else {
		ss.recordSet(name, "")
	}
	ss.resig()
}

// noteServerState updates what the router knows of the attached backend
// for a statement about to run on it: DISCARD and DEALLOCATE drop prepared
// statements (the router's own too) and settings; RESET ALL resets
// search_path and the tenant id; session settings changed
// in ways the router does not track (a SET among several statements,
// set_config of another setting) mark the backend's settings as unknown,
// so that the next client on it gets RESET ALL and its own settings
// instead of inheriting them.
func (ss *session) noteServerState(info *stmtInfo) {
	be := ss.be
	if info.kind == kDiscard || info.kind == kDeallocate || info.laterDiscard {
		be.Prepared = make(map[string]struct{})
		be.ForgetUnnamed()
		be.Schema, be.Tenant, be.SessionSig = "\x00", "\x00", "\x00"
		return
	}
	if info.kind == kReset && info.setName == "all" {
		// The server's RESET ALL resets search_path and the tenant id too,
		// local settings included: what follows in the pipeline (or the
		// transaction) gets them again.
		be.Schema, be.Tenant = "\x00", "\x00"
		ss.markSetupEach()
	}
	if info.laterSet || (info.multi && (info.kind == kSet || info.kind == kReset)) ||
		(info.callsSetConfig && !info.plainSetConfig && !info.localSetConfig && !(info.pathSetConfig && ss.mayOwnPath())) {
		// set_config may have changed search_path or the tenant id too.
		be.SessionSig, be.Schema, be.Tenant = "\x00", "\x00", "\x00"
		ss.markSetupEach()
	}
}

// pathStmt reports whether a statement is one by which a client sets its
// own search_path (see ownsPath), allowed in session pool mode: exactly
// one SET [SESSION|LOCAL] search_path, RESET search_path, or SELECT
// set_config('search_path', v, b) with v a literal or a parameter and b a
// literal. Other spellings (a quoted or escaped name, set_config inside a
// larger statement or a DO block) stay refused: the router could not tell
// which path is in force.
func (ss *session) pathStmt(info *stmtInfo) bool {
	if info.multi || !ss.mayOwnPath() {
		return false
	}
	return ((info.kind == kSet || info.kind == kReset) && info.setName == "search_path") || info.pathSetConfig
}

// notePath notes, as a statement goes to the backend, what it does to the
// client's own search_path (see ownsPath): a reset makes the statements
// after it, in the same pipeline or transaction, get the shard's path again.
func (ss *session) notePath(info *stmtInfo) {
	if !ss.mayOwnPath() || info.multi {
		return
	}
	set := (info.kind == kSet && info.setName == "search_path" && !info.isLocal && !info.setDefault) ||
		(info.pathSetConfig && !info.isLocal)
	reset := (info.kind == kReset && (info.setName == "search_path" || info.setName == "all")) ||
		(info.kind == kSet && info.setName == "search_path" && !info.isLocal && info.setDefault)
	switch {
	case set:
		ss.pathNext = 1
	case reset && ss.ownsPath():
		ss.pathNext = -1
		ss.be.Schema = "\x00"
		ss.markSetupEach()
	}
}

// setDone notes a client's session SET that the backend ran without error.
// It takes effect for good only when its transaction commits (an implicit
// one at the next idle ReadyForQuery): until then the backend's settings
// are unknown, and an error or a ROLLBACK undoes it (endTxnSets).
func (ss *session) setDone(st *setting) {
	ss.txnSets = append(ss.txnSets, *st)
	if ss.be != nil {
		ss.be.SessionSig = "\x00"
	}
}

// endTxnSets records the SETs of a transaction that ended if it committed,
// and drops them if not. The backend's settings stay unknown either way (the
// transaction may also have changed what the router does not track): the
// next statement on it gets RESET ALL and the session's settings first.
func (ss *session) endTxnSets(committed bool) {
	if committed {
		for _, st := range ss.txnSets {
			if st.reset {
				ss.reset(st.name)
			} else {
				ss.recordSet(st.name, st.stmt)
			}
		}
	}
	ss.txnSets = ss.txnSets[:0]
}

// recordSet records (stmt != "") or forgets (stmt == "") a session setting.
func (ss *session) recordSet(name, stmt string) {
	out := ss.sets[:0:0]
	for _, s := range ss.sets {
		if s.name != name {
			out = append(out, s)
		}
	}
	if stmt != "" {
		stmt = strings.TrimRight(strings.TrimSpace(stmt), ";")
		out = append(out, setting{name: name, stmt: stmt})
	}
	ss.sets = out
	ss.resig()
}

// onParse records a client statement and answers ParseComplete itself; the
// statement is prepared on a backend when first bound or described.
func (ss *session) onParse(body []byte) *wire.Error {
	pm, err := wire.DecodeParse(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	var def *stmtDef
	if len(pm.Name) == 0 {
		if u := ss.unnamed; u != nil && u.orig == string(pm.Query) && string(u.types) == string(pm.Rest) {
			def = u
		}
	}
	if def == nil {
		q := ss.cr.String(pm.Query) // no copy of a large statement
		if e := ss.checkAccess(q); e != nil {
			return e
		}
		def = &stmtDef{query: q, orig: q, types: append([]byte(nil), pm.Rest...), info: classify(q)}
		if def.info.guardScan && !ss.pathStmt(&def.info) {
			def.guard = guard(q)
		}
		if def.info.op == opShow && !def.info.multi {
			// Answered by the backend the tenant routes to.
			def.query = `SELECT pg_catalog.current_setting('pgtenant.tenant_id', true) AS "pgtenant.tenant"`
		}
	}
	if e := ss.refuse(&def.info, def.guard); e != nil {
		return e
	}
	if def.info.kind == kBegin && !def.info.multi {
		// The router may answer its Bind itself (a deferred BEGIN): refuse a
		// malformed one now, as the server's Parse would.
		if e := checkTxnStart(def.orig); e != nil {
			return e
		}
	}
	if len(pm.Name) != 0 {
		if _, ok := ss.stmts[string(pm.Name)]; ok {
			return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", pm.Name)}
		}
		if _, ok := ss.sqlStmts[string(pm.Name)]; ok {
			// Made with SQL PREPARE: one namespace on the server.
			return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", pm.Name)}
		}
		if ss.srv.cfg.PoolMode == PoolSession {
			// The client's name is the server's, as with pgbouncer in
			// session mode: pg_prepared_statements shows it.
			if strings.HasPrefix(string(pm.Name), routerStmtPrefix) {
				return reservedStmtError(string(pm.Name))
			}
			def.server, def.clientName = string(pm.Name), true
		} else {
			def.server = ss.srv.serverName(def.query, pm.Rest)
		}
		ss.stmts[string(pm.Name)] = def
		// A large text stays counted in the budget for client messages
		// for as long as the statement is kept. (Not an unnamed one: a
		// backend keeps it until its next unnamed statement, long after
		// the client is gone.)
		wire.KeepWith(ss.cr, def)
	} else {
		ss.unnamed = def
	}
	sent, werr := ss.parseNow(def)
	if werr != nil {
		// Not prepared, as a server would leave it.
		if len(pm.Name) != 0 {
			delete(ss.stmts, string(pm.Name))
		} else {
			ss.unnamed = nil
		}
		return werr
	}
	if !sent {
		ss.push(expect{kind: eSynth, synth: wire.ParseComplete})
	}
	if len(pm.Name) != 0 || sent {
		q := &ss.queue[len(ss.queue)-1]
		q.stmt, q.stmtName = def, string(pm.Name)
	}
	return nil
}

// dropParsed forgets the client statement whose Parse e answers, when the
// server refused the Parse or skipped it after an earlier error of the
// pipeline: as on a server, it does not exist.
func (ss *session) dropParsed(e *expect) {
	// (The unnamed statement is left alone: a skipped Parse leaves the
	// previous one on a server, a refused one is refused again at Bind.)
	if e.stmt != nil && e.stmtName != "" && ss.stmts[e.stmtName] == e.stmt {
		delete(ss.stmts, e.stmtName)
	}
}

// parseNow sends def's Parse to a backend at once, its answer (ParseComplete
// or the server's error) being the client's, when the tenant it would run
// for is known and nothing else is bound to the session in the meantime: a
// client that prepares a statement (libpq's PQprepare: Parse, Sync) then
// hears of a syntax error or a missing table at once, as from a server.
// Otherwise (no tenant yet, a statement the router answers itself) the
// router answers ParseComplete and the statement is prepared where it is
// first bound or described.
//
// An error attaching the backend (the shard is being moved, the node is
// down, a transaction was cut) is the Parse's.
func (ss *session) parseNow(def *stmtDef) (bool, *wire.Error) {
	info := &def.info
	if info.op != opNone || ss.failed || ss.skipToSync || ss.pendingBegin != "" {
		return false, nil
	}
	if !info.multi && (info.kind == kBegin || info.kind == kCommit || info.kind == kRollback) {
		return false, nil
	}
	tenant := ss.pickTenant(info)
	if tenant == "" || (ss.be != nil && tenant != ss.beTenant) {
		return false, nil
	}
	if m := ss.srv.mp.Load(); m == nil {
		return false, nil
	} else if _, e := ss.locate(m, tenant); e != nil {
		return false, nil // reported when the statement is bound
	}
	if e := ss.ensureBackend(tenant); e != nil {
		return false, e
	}
	ss.sendParseSetup(def)
	return ss.prepareOn(def, false), nil
}

// deallocate forgets the client's statement name, if it has one, and
// reports whether it had.
func (ss *session) deallocate(name string) bool {
	def, ok := ss.stmts[name]
	if !ok {
		return false
	}
	delete(ss.stmts, name)
	if !def.clientName {
		ss.srv.forgetStmt(def.server, def.query, def.types)
	}
	return true
}

// routerStmtPrefix starts the names of the router's own statements on a
// backend (pgtenant_setup, pgtenant_begin, ...; in transaction mode the
// client's statements too). In session mode, where client statement names
// go to the backend as they are, a client name with it is refused.
const routerStmtPrefix = "pgtenant_"

// reservedStmtError refuses a client statement name that starts with
// routerStmtPrefix in session mode.
func reservedStmtError(name string) *wire.Error {
	return &wire.Error{Code: "42939", Message: fmt.Sprintf("prepared statement name %q is reserved: names starting with %q belong to pgtenant", name, routerStmtPrefix),
		Hint: "Name the statement without the pgtenant_ prefix."}
}

// closeOnServer closes, in session mode, the server statements of a
// statement the client closed, once no other statement of the client
// shares them: the backend is the client's own, and as on a direct
// connection pg_prepared_statements shows what the client keeps prepared.
// (In transaction mode server statements are shared by the backend's
// clients and stay until Config.MaxPrepared trims them.) What the router
// records can only err towards "missing" (see closeFirst): should the
// server skip the Close (an error earlier in the pipeline), the statement
// is closed again before it is next prepared.
func (ss *session) closeOnServer(def *stmtDef) {
	if ss.srv.cfg.PoolMode != PoolSession || ss.be == nil || def.server == "" {
		return
	}
	if def.clientName {
		// Under the client's own name: at most one on the backend.
		if _, ok := ss.be.Prepared[def.server]; ok {
			delete(ss.be.Prepared, def.server)
			ss.out = wire.AppendTarget(ss.out[:0], 'S', def.server)
			ss.be.W.WriteFrame(wire.MsgClose, ss.out)
			ss.push(expect{kind: eClose, swallow: true})
		}
		return
	}
	for _, d := range ss.stmts {
		if d.server == def.server {
			return
		}
	}
	prefix := def.server + "_" // one per shard schema (serverStmt)
	for name := range ss.be.Prepared {
		if strings.HasPrefix(name, prefix) {
			delete(ss.be.Prepared, name)
			ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
			ss.be.W.WriteFrame(wire.MsgClose, ss.out)
			ss.push(expect{kind: eClose, swallow: true})
		}
	}
}

// noteSQLStmts notes, as a text goes to the session-mode backend, the
// statement names its own statements DEALLOCATE (forgotten now: a name
// that was not there stays absent) and returns those it PREPAREs, which
// the text's CommandComplete PREPAREs record (see expect.prep).
func (ss *session) noteSQLStmts(g *guardFinding) []string {
	if g == nil || ss.srv.cfg.PoolMode != PoolSession {
		return nil
	}
	for _, name := range g.deallocs {
		delete(ss.sqlStmts, name)
	}
	if g.deallocAll {
		ss.sqlStmts = nil
	}
	return g.prepares
}

// notePrepared records a name the client's SQL PREPARE made on its backend.
func (ss *session) notePrepared(name string) {
	if ss.sqlStmts == nil {
		ss.sqlStmts = make(map[string]struct{})
	}
	ss.sqlStmts[name] = struct{}{}
}

// deallocateAll forgets all the client's statements.
func (ss *session) deallocateAll() {
	for name := range ss.stmts {
		ss.deallocate(name)
	}
}

func (ss *session) lookup(name []byte) (*stmtDef, *wire.Error) {
	if len(name) == 0 {
		if ss.unnamed == nil {
			return nil, &wire.Error{Code: "26000", Message: "unnamed prepared statement does not exist"}
		}
		return ss.unnamed, nil
	}
	def, ok := ss.stmts[string(name)]
	if !ok {
		return nil, &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)}
	}
	return def, nil
}

// onBind routes the statement being bound and forwards the Bind.
func (ss *session) onBind(body []byte) *wire.Error {
	bm, err := wire.DecodeBind(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	def, werr := ss.lookup(bm.Stmt)
	if werr != nil {
		return werr
	}
	if ss.failed && ss.be == nil {
		if def.info.kind == kCommit || def.info.kind == kRollback {
			ss.synthPortal(bm.Portal, "ROLLBACK")
			return nil
		}
		return abortedError()
	}
	if def.guard != nil {
		if e := def.guard.checkParams(bm.Rest); e != nil {
			return e
		}
	}
	if !def.info.multi {
		switch def.info.kind {
		case kDeallocate:
			if tag, e, ok := ss.answerDeallocate(def.orig, &def.info); ok {
				if e != nil {
					return e
				}
				ss.synthPortal(bm.Portal, tag)
				return nil
			}
		case kBegin:
			if ss.canDefer() {
				if ss.pendingBegin == "" {
					ss.pendingBegin = def.query
				}
				ss.synthPortal(bm.Portal, "BEGIN")
				return nil
			}
		case kCommit, kRollback:
			if ss.be == nil || ss.pendingBegin != "" {
				tag := "COMMIT"
				if def.info.kind == kRollback {
					tag = "ROLLBACK"
				}
				ss.pendingBegin, ss.localTenant = "", ""
				ss.synthPortal(bm.Portal, tag)
				return nil
			}
		}
	}
	if k := def.info; k.reservedSet && (k.kind == kSet || k.kind == kReset) && !ss.pathStmt(&k) {
		return reservedSetError(k.setName)
	}
	if ss.portalSet != nil && ss.portalSetName == string(bm.Portal) {
		ss.portalSet = nil // the portal is replaced before it ran
	}
	if k := def.info; k.kind == kSet && k.op == opNone && !k.multi && !k.isLocal && k.setName != "transaction" && (!k.reservedSet || ss.pathStmt(&k)) {
		ss.portalSet = &setting{name: k.setName, stmt: def.orig}
		if k.setDefault && k.setName == "search_path" {
			ss.portalSet = &setting{name: k.setName, reset: true}
		}
		ss.portalSetName = string(bm.Portal)
	}
	if k := def.info; k.pathSetConfig && !k.isLocal && ss.mayOwnPath() {
		v := k.val
		if k.param > 0 {
			p, _, ok := wire.BindParam(bm.Rest, k.param-1)
			if !ok || p == nil {
				return &wire.Error{Code: "22023", Message: "set_config of search_path needs a non-null value through pgtenant",
					Hint: "Pass the search_path as a string."}
			}
			v = string(p)
		}
		ss.portalSet = &setting{name: "search_path", stmt: pathSetting(v)}
		ss.portalSetName = string(bm.Portal)
	}
	if k := def.info; k.kind == kReset && k.op == opNone && (!k.reservedSet || ss.pathStmt(&k)) {
		if ss.be == nil {
			ss.reset(k.setName)
			ss.synthPortal(bm.Portal, "RESET")
			return nil
		}
		ss.portalSet = &setting{name: k.setName, reset: true}
		ss.portalSetName = string(bm.Portal)
	}
	switch def.info.op {
	case opSet, opSetLocal:
		if def.info.op == opSet || ss.inTxn() {
			if e := ss.setTenant(def.info.val, def.info.op == opSetLocal); e != nil {
				return e
			}
		}
	case opReset:
		ss.tenant = ss.startTenant
		ss.setView()
	}
	if def.info.op == opSetConfig {
		v := def.info.val
		if def.info.param > 0 {
			p, _, ok := wire.BindParam(bm.Rest, def.info.param-1)
			if !ok || p == nil {
				return &wire.Error{Code: "22023", Message: "set_config of pgtenant.tenant needs a non-null tenant id"}
			}
			v = string(p)
		}
		if e := ss.setTenant(v, def.info.isLocal); e != nil {
			return e
		}
		if def.info.plainSetConfig {
			ss.synthPortal(bm.Portal, "SELECT 1")
			ss.synthRow, ss.synthValue, ss.synthFormat = true, v, wire.BindResultFormat(bm.Rest)
			return nil
		}
	}
	var ddlNote []byte
	if def.info.ddl {
		t := ss.pickTenant(&def.info)
		if t == "" && ss.be != nil && ss.status != 'I' {
			t = ss.beTenant
		}
		var e *wire.Error
		if ddlNote, e = ss.ddlCheck(&def.info, t); e != nil {
			return e
		}
	}
	if e := ss.route(def, false); e != nil {
		return e
	}
	ss.noteShardUse(&def.info)
	ss.sendSetup(&def.info, true)
	if e := ss.ensurePrepared(def); e != nil {
		if e == skipRest {
			return nil
		}
		return e
	}
	ss.noteServerState(&def.info)
	ss.notePath(&def.info)
	ss.noteEnding(&def.info)
	if prep := ss.noteSQLStmts(def.guard); prep != nil {
		ss.portalPrep, ss.portalPrepName = prep, string(bm.Portal)
	}
	name := ss.serverStmt(def)
	ss.out = wire.AppendBind(ss.out[:0], bm.Portal, name, bm.Rest)
	ss.be.W.WriteFrame(wire.MsgBind, ss.out)
	if ddlNote != nil {
		ss.push(expect{kind: eSynth, synth: ddlNote})
	}
	if len(bm.Portal) == 0 {
		ss.clientPortal = true
	}
	ss.push(expect{kind: eBind, name: name, stmt: def})
	return nil
}

var (
	bindComplete = []byte{wire.MsgBindComplete, 0, 0, 0, 4}
	noParams     = []byte{wire.MsgParamDesc, 0, 0, 0, 6, 0, 0}
)

// synthPortal answers a Bind of a transaction-control statement the router
// handles itself; the portal's Execute gets CommandComplete with tag.
func (ss *session) synthPortal(portal []byte, tag string) {
	ss.synthName, ss.synthTag, ss.synthRow = string(portal), tag, false
	ss.push(expect{kind: eSynth, synth: bindComplete})
}

// route attaches the backend a prepared statement runs on (or, for a
// Describe, one that can describe it).
func (ss *session) route(def *stmtDef, describe bool) *wire.Error {
	if describe {
		// Describing must not open the deferred transaction for a tenant
		// that the statement (SET LOCAL, set_config) may change. A
		// statement that runs for a known tenant opens it, as its Bind
		// would: the Bind that follows in the same pipeline (postgres.js)
		// must find that tenant's backend, the tenant's own tables are
		// described (not shard 0's), and a statement that fails to parse
		// fails the transaction (not before its BEGIN, on a session
		// mode backend).
		keepDeferred := def.info.op == opSetConfig || (ss.pendingBegin != "" && (def.info.op != opNone || ss.pickTenant(&def.info) == ""))
		if ss.be != nil && (ss.pendingBegin == "" || keepDeferred) {
			return nil
		}
		if keepDeferred {
			return ss.ensureBackend(descTenant)
		}
	}
	tenant := ss.pickTenant(&def.info)
	if tenant == "" {
		if ss.be != nil && ss.status != 'I' {
			return nil
		}
		if def.noShard == 0 {
			def.noShard, def.noShardErr = 2, nil
			if ok, e := ss.noShard(&def.info, def.query); ok {
				def.noShard = 1
			} else {
				def.noShardErr = e
			}
		}
		switch {
		case def.noShard == 1:
			tenant = anyTenant
		case describe:
			tenant = descTenant
		default:
			return def.noShardErr
		}
	}
	return ss.ensureBackend(tenant)
}

func (ss *session) onDescribe(body []byte) *wire.Error {
	kind, name, err := wire.DecodeTarget(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	if kind == 'P' {
		if ss.synthTag != "" && name == ss.synthName {
			if ss.synthRow {
				ss.push(expect{kind: eSynth, synth: wire.AppendTextRowDescriptionFormat(nil, "set_config", ss.synthFormat)})
			} else {
				ss.push(expect{kind: eSynth, synth: wire.NoData})
			}
			return nil
		}
		if ss.be == nil {
			return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", name)}
		}
		ss.be.W.WriteFrame(wire.MsgDescribe, body)
		ss.push(expect{kind: eDescP})
		return nil
	}
	def, werr := ss.lookup([]byte(name))
	if werr != nil {
		return werr
	}
	if ss.failed && ss.be == nil {
		return abortedError()
	}
	if def.info.plainSetConfig {
		ss.push(expect{kind: eSynth, synth: setConfigParams(def)})
		ss.push(expect{kind: eSynth, synth: wire.AppendTextRowDescription(nil, "set_config")})
		return nil
	}
	if k := def.info.kind; (k == kBegin || k == kCommit || k == kRollback) && !def.info.multi && (ss.be == nil || ss.pendingBegin != "") {
		ss.push(expect{kind: eSynth, synth: noParams})
		ss.push(expect{kind: eSynth, synth: wire.NoData})
		return nil
	}
	if e := ss.route(def, true); e != nil {
		return e
	}
	ss.sendParseSetup(def)
	if e := ss.ensurePrepared(def); e != nil {
		if e == skipRest {
			return nil
		}
		return e
	}
	server := ss.serverStmt(def)
	ss.out = wire.AppendTarget(ss.out[:0], 'S', server)
	ss.be.W.WriteFrame(wire.MsgDescribe, ss.out)
	ss.push(expect{kind: eDescS, name: server, stmt: def})
	return nil
}

func (ss *session) onExecute(body []byte) *wire.Error {
	if n := len(ss.synthName); ss.synthTag != "" && len(body) > n && string(body[:n]) == ss.synthName && body[n] == 0 {
		if ss.synthRow {
			ss.push(expect{kind: eSynth, synth: wire.AppendTextDataRow(nil, ss.synthValue)})
		}
		ss.push(expect{kind: eSynth, synth: wire.AppendCommandComplete(nil, ss.synthTag)})
		if ss.synthTag == "ROLLBACK" || ss.synthTag == "COMMIT" {
			ss.failed = false
		}
		ss.synthTag, ss.synthRow = "", false
		return nil
	}
	if ss.be == nil {
		if ss.failed {
			return abortedError()
		}
		portal, _, _ := strings.Cut(string(body), "\x00")
		return &wire.Error{Code: "34000", Message: fmt.Sprintf("portal %q does not exist", portal)} // as the server words it
	}
	var set *setting
	if st := ss.portalSet; st != nil {
		if n := len(ss.portalSetName); len(body) > n && string(body[:n]) == ss.portalSetName && body[n] == 0 {
			set = st
			ss.portalSet = nil
		}
	}
	var prep []string
	if n := len(ss.portalPrepName); ss.portalPrep != nil && len(body) > n && string(body[:n]) == ss.portalPrepName && body[n] == 0 {
		prep, ss.portalPrep = ss.portalPrep, nil
	}
	ss.be.W.WriteFrame(wire.MsgExecute, body)
	ss.push(expect{kind: eExec, set: set, prep: prep})
	return nil
}

func (ss *session) onClose(body []byte) *wire.Error {
	kind, name, err := wire.DecodeTarget(body)
	if err != nil {
		return &wire.Error{Severity: "FATAL", Code: "08P01", Message: err.Error()}
	}
	if kind == 'S' {
		if name == "" {
			ss.unnamed = nil
		} else if def := ss.stmts[name]; def != nil {
			ss.deallocate(name)
			ss.closeOnServer(def)
		} else if _, ok := ss.sqlStmts[name]; ok && ss.be != nil {
			// Made with SQL PREPARE: the server closes it, as it would
			// without the router.
			delete(ss.sqlStmts, name)
			ss.be.W.WriteFrame(wire.MsgClose, body)
			ss.push(expect{kind: eClose})
			return nil
		}
		ss.push(expect{kind: eSynth, synth: wire.CloseComplete})
		return nil
	}
	if ss.portalSet != nil && name == ss.portalSetName {
		ss.portalSet = nil
	}
	if ss.be == nil || (ss.synthTag != "" && name == ss.synthName) {
		ss.push(expect{kind: eSynth, synth: wire.CloseComplete})
		return nil
	}
	ss.be.W.WriteFrame(wire.MsgClose, body)
	ss.push(expect{kind: eClose})
	return nil
}

func (ss *session) onSync([]byte) *wire.Error {
	ss.skipToSync = false
	ss.portalSet, ss.portalPrep = nil, nil
	ss.synthTag, ss.synthRow = "", false
	if ss.be != nil {
		ss.be.W.Write(wire.SyncMsg)
		ss.push(expect{kind: eSync})
	} else {
		ss.push(expect{kind: eSynthRFQ})
	}
	// A setup sent with the transaction just ended is rolled back with it:
	// learn its fate before anything else is sent on the backend.
	if ss.cr.Buffered() == 0 || ss.syncs > 16 || ss.setupOpen || ss.localOpen || ss.resetDue() {
		if err := ss.drain(false); err != nil {
			return ss.clientFailed(err)
		}
	}
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
