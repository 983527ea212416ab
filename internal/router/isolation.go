package router

import (
	"fmt"

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
	case info.holdCursor:
		return &wire.Error{Code: "0A000", Message: "cursors WITH HOLD are not supported in transaction pool mode: they would outlive the transaction on a shared backend connection",
			Hint: "Declare the cursor without HOLD inside a transaction, or use session pool mode."}
	case info.kind == kDeallocate && info.multi:
		return &wire.Error{Code: "0A000", Message: "DEALLOCATE must be a query of its own in transaction pool mode",
			Hint: "Send DEALLOCATE alone."}
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
// SQL PREPARE (or DEALLOCATE ALL with a backend attached, which drops those
// too).
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
	if name != "" && ss.deallocate(name) {
		return "DEALLOCATE", nil, true
	}
	if session && ss.be != nil {
		return "", nil, false
	}
	return "", &wire.Error{Code: "26000", Message: fmt.Sprintf("prepared statement %q does not exist", name)}, true
}
