package router

import (
	"bytes"
	"encoding/binary"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// A Parse (or Describe) of DML needs the tenant's search_path before the
// server analyses it, so its setup cannot wait for the Bind. syncSetup
// sends it as session settings with a Sync of the router's own: the
// server then runs two transactions per client transaction, and re-plans
// the prepared setup each time (the session search_path it was planned
// with keeps changing). Clients that parse every statement (pgbench -M
// extended, pgconn's ExecParams, pgx's QueryExecModeExec) send Parse,
// Bind, Describe, Execute and Sync in one write: when the router can see
// that whole pipeline buffered and it binds nothing but the statement
// being parsed, the statement the client binds next is that DML
// statement, which runs in an implicit block anyway, and the
// transaction-local setup goes ahead of the Parse without a Sync, as
// before a Bind (writeSetup).

// sendParseSetup is sendSetup for a Parse or Describe of the client's
// statement def: the setup goes as before a Bind when only binds of def
// follow (onlyBindsFollow) where sendSetup would send it with a Sync of
// its own (syncSetup).
func (ss *session) sendParseSetup(def *stmtDef) {
	info := &def.info
	if info.dml && !ss.unsynced && ss.setupWanted(info, false) && (ss.setupDue || ss.cleanDue) &&
		!(ss.setupLocal && ss.localOpen) && !ss.setupEach && ss.onlyBindsFollow(def) {
		ss.writeSetup()
		return
	}
	ss.sendSetup(info, false)
}

// onlyBindsFollow reports whether the client's messages already buffered
// after the one being handled are, up to and including a Sync, only Binds
// of the client statement def (at least one), Describes of it or of a
// portal bound in them, and Executes of such portals. (A Parse with a Sync
// alone keeps syncSetup: the session settings it leaves may spare the
// Bind that follows a setup of its own.)
func (ss *session) onlyBindsFollow(def *stmtDef) bool {
	b := ss.cr.Pending()
	var portals [4][]byte
	np := 0
	bound := func(p []byte) bool {
		for _, q := range portals[:np] {
			if bytes.Equal(p, q) {
				return true
			}
		}
		return false
	}
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || len(b) < 1+n {
			return false
		}
		typ, body := b[0], b[5:1+n]
		b = b[1+n:]
		switch typ {
		case wire.MsgSync:
			return np > 0
		case wire.MsgBind:
			i := bytes.IndexByte(body, 0)
			if i < 0 || np == len(portals) {
				return false
			}
			stmt := body[i+1:]
			j := bytes.IndexByte(stmt, 0)
			if j < 0 || !ss.isStmt(stmt[:j], def) {
				return false
			}
			portals[np] = body[:i]
			np++
		case wire.MsgDescribe:
			if len(body) < 2 || body[len(body)-1] != 0 {
				return false
			}
			target := body[1 : len(body)-1]
			switch body[0] {
			case 'S':
				if !ss.isStmt(target, def) {
					return false
				}
			case 'P':
				if !bound(target) {
					return false
				}
			default:
				return false
			}
		case wire.MsgExecute:
			i := bytes.IndexByte(body, 0)
			if i < 0 || !bound(body[:i]) {
				return false
			}
		default:
			return false
		}
	}
	return false
}

// isStmt reports whether the client's statement name stands for def.
func (ss *session) isStmt(name []byte, def *stmtDef) bool {
	if len(name) == 0 {
		return ss.unnamed == def
	}
	return ss.stmts[string(name)] == def
}
