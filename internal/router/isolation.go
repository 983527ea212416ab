package router

import (
	"fmt"
	"time"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// What a client leaves on a backend connection must never reach another
// client. In transaction pool mode the router refuses what would outlive
// the transaction (refuse), answers DEALLOCATE itself (deallocate), and
// runs DISCARD TEMP before a client's first statement on every backend it
// takes from the pool (cleanDue; see writeSetup), which drops temporary
// objects nothing here could see being made (by a function, a DO block).
// In session pool mode a client owns its backend until it leaves, and the
// backend is reset with DISCARD ALL before another client gets it.

// discardTempStmt is the router's prepared DISCARD TEMP.
const (
	discardTempStmt = "pgtenant_discard_temp"
	discardTempSQL  = "DISCARD TEMP"
)

// refuse checks a statement text before anything of it runs: two tenant
// hints, changes of the settings the router owns (guard's finding g), and
// in transaction pool mode what would outlive the transaction on a pooled
// backend: temporary objects other than ON COMMIT DROP tables, SQL-level
// PREPARE and EXECUTE, and cursors WITH HOLD.
func (ss *session) refuse(info *stmtInfo, g *guardFinding) *wire.Error {
	if info.hint2 != "" {
		return &wire.Error{Code: "25001", Message: fmt.Sprintf("this query names tenant %q and tenant %q; one query runs on one shard", info.hint, info.hint2),
			Hint: "Send each tenant's statements as a query of its own."}
	}
	if g != nil && g.err != nil {
		return g.err
	}
	if e := ss.refuseNames(g); e != nil {
		return e
	}
	if ss.srv.cfg.PoolMode != PoolTransaction {
		return nil
	}
	switch {
	case info.createTemp && info.tempKept:
		return &wire.Error{Code: "0A000", Message: "temporary objects are not supported in transaction pool mode: they would outlive the transaction on a shared backend connection",
			Hint: "Create temporary tables with ON COMMIT DROP inside a transaction, or use session pool mode."}
	case info.sqlPrepare || (g != nil && g.prepare):
		return &wire.Error{Code: "0A000", Message: "SQL PREPARE and EXECUTE are not supported in transaction pool mode: prepared statements would outlive the transaction on a shared backend connection",
			Hint: "Use your driver's protocol-level prepared statements (they work in transaction mode), or session pool mode."}
	case info.sessionLock || (g != nil && g.sessionLock):
		return &wire.Error{Code: "0A000", Message: "session-level advisory locks are not supported in transaction pool mode: the lock would stay with the backend connection, which serves other clients after the transaction",
			Hint: "Use pg_advisory_xact_lock or pg_try_advisory_xact_lock (released at the end of the transaction), or session pool mode."}
	case info.holdCursor:
		return &wire.Error{Code: "0A000", Message: "cursors WITH HOLD are not supported in transaction pool mode: they would outlive the transaction on a shared backend connection",
			Hint: "Declare the cursor without HOLD inside a transaction, or use session pool mode."}
	case info.kind == kListen || info.laterListen:
		// As in a simple Query (onQuery): a Parse of LISTEN too.
		return &wire.Error{Code: "0A000", Message: "LISTEN is not supported in transaction pool mode",
			Hint: "Connect to a router in session pool mode to use LISTEN/NOTIFY."}
	case info.kind == kDeallocate && info.multi:
		return &wire.Error{Code: "0A000", Message: "DEALLOCATE must be a query of its own in transaction pool mode",
			Hint: "Send DEALLOCATE alone."}
	}
	return nil
}

// refuseNames refuses what a text does to prepared statement names that
// the router could not follow: the router's own names (pgtenant_...; 42939
// in session mode, where client names reach the server as they are; in
// transaction mode SQL PREPARE and EXECUTE are refused anyway, and
// DEALLOCATE is answered by the router), a name written U&"...", and PREPARE
// or DEALLOCATE inside a DO block (unseen, they would make or drop names
// behind the router's back: its own statements on a pooled backend too).
func (ss *session) refuseNames(g *guardFinding) *wire.Error {
	if g == nil {
		return nil
	}
	session := ss.srv.cfg.PoolMode == PoolSession
	switch {
	case g.reserved != "" && session:
		return reservedStmtError(g.reserved)
	case g.reserved != "":
		return &wire.Error{Code: "0A000", Message: fmt.Sprintf("prepared statement %q belongs to pgtenant", g.reserved),
			Hint: "Prepare your own statements with names that do not start with pgtenant_."}
	case g.reservedDealloc != "" && session:
		return reservedStmtError(g.reservedDealloc)
	case g.badName:
		return &wire.Error{Code: "0A000", Message: `a prepared statement name written U&"..." is not supported through pgtenant`,
			Hint: "Write the statement name plainly or in double quotes."}
	case g.dealloc, g.prepare && session:
		return &wire.Error{Code: "0A000", Message: "SQL PREPARE and DEALLOCATE inside a DO block are not supported through pgtenant: the router keeps track of the session's statement names",
			Hint: "Run PREPARE and DEALLOCATE as statements of their own."}
	}
	if session {
		for _, name := range g.prepares {
			if _, ok := ss.stmts[name]; ok {
				return &wire.Error{Code: "42P05", Message: fmt.Sprintf("prepared statement %q already exists", name)}
			}
		}
	}
	return nil
}

// answerDeallocate answers DEALLOCATE name or DEALLOCATE ALL (sql) of the
// client's protocol-level prepared statements, which the router keeps
// (drivers such as ActiveRecord's send DEALLOCATE for statements they
// prepared with Parse): it forgets them (so a later Parse of the same text
// reaches a fresh server statement) and reports the tag, or a 26000 error
// for an unknown name. It reports handled false when the statement must go
// to the backend instead: in session mode, a statement the client made with
// SQL PREPARE, one prepared on the client's backend under its own name
// (forgotten here too), or DEALLOCATE ALL with a backend attached, which
// drops those too.
func (ss *session) answerDeallocate(sql string, info *stmtInfo) (tag string, werr *wire.Error, handled bool) {
	session := ss.srv.cfg.PoolMode == PoolSession
	name, all, ok := deallocateTarget(sql)
	if !ok {
		name, all = info.setName, info.setName == "all"
	}
	if all {
		ss.deallocateAll()
		if session && ss.be != nil {
			return "", nil, false
		}
		return "DEALLOCATE ALL", nil, true
	}
	if name != "" {
		if def := ss.stmts[name]; def != nil && def.clientName && ss.be != nil {
			if _, on := ss.be.Prepared[def.server]; on {
				// Session mode: prepared on the client's backend under the
				// client's name, the server deallocates it too.
				ss.deallocate(name)
				return "", nil, false
			}
		}
		if ss.deallocate(name) {
			return "DEALLOCATE", nil, true
		}
	}
	if session && ss.be != nil {
		return "", nil, false
	}
	return "", &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)}, true
}

// writeClean sends a due DISCARD TEMP (see cleanDue) as Bind/Execute of a
// statement prepared once per backend, in the transaction that the
// client's statement runs in: should that transaction roll back, the next
// one on this backend is cleaned again, and within it nothing the
// previous client made is visible.
func (ss *session) writeClean() {
	if !ss.cleanDue {
		return
	}
	ss.cleanDue = false
	ss.bindPrepared(discardTempStmt, discardTempSQL, nil, nil)
}

// endIdleTxn rolls back the transaction of a client that stayed idle in
// it too long, so that session.end returns its backend to the pool; a
// backend in any other state (an unsynced pipeline, answers not read) is
// closed instead, which rolls it back too.
func (ss *session) endIdleTxn() {
	be := ss.be
	if be == nil || (ss.status == 'I' && !ss.unsynced) {
		return
	}
	if ss.unsynced || len(ss.queue) > 0 || be.Broken() {
		be.MarkBroken()
		return
	}
	be.SetDeadline(time.Now().Add(5 * time.Second))
	be.W.Write(wire.AppendQuery(ss.out[:0], "ROLLBACK"))
	ok := be.W.Flush() == nil
	for ok {
		typ, body, err := be.R.ReadMessage()
		if err != nil || typ == wire.MsgErrorResponse {
			ok = false
			break
		}
		if typ == wire.MsgReadyForQuery {
			ok = len(body) == 1 && body[0] == 'I'
			break
		}
	}
	be.SetDeadline(time.Time{})
	if !ok {
		be.MarkBroken()
		return
	}
	ss.status = 'I'
	ss.doubtSetup()
	if len(ss.txnSets) > 0 {
		ss.endTxnSets(false)
	}
}
