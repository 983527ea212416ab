package router

import (
	"github.com/pgtenant/pgtenant/internal/wire"
)

// prepareOn queues a Parse of def on the attached backend unless it is there
// already, and reports whether it did; swallow hides its answer from the
// client. For a named statement there already, shape is what a Describe
// of it on this backend said (0: none did; see stale.go).
func (ss *session) prepareOn(def *stmtDef, swallow bool) (sent bool, shape uint64) {
	be := ss.be
	name := ss.serverStmt(def)
	if name != "" {
		if h, ok := be.Prepared[name]; ok {
			return false, h
		}
		be.Prepared[name] = 0
		ss.closeFirst(name)
	} else {
		if be.Unnamed() == any(def) && be.UnnamedParse == def.parses {
			return false, def.shape // parsed for def: as described
		}
	}
	ss.out = wire.AppendParse(ss.out[:0], name, def.query, def.types)
	be.W.WriteFrame(wire.MsgParse, ss.out)
	if name == "" {
		be.SetUnnamed(def)
		be.UnnamedParse = def.parses
	}
	ss.push(expect{kind: eParse, swallow: swallow, name: name})
	return true, 0
}

// serverStmt is the name def is prepared under on the attached backend:
// one per client statement text and shard schema ("" for the unnamed
// statement). Postgres re-analyses and re-plans a prepared statement each
// time it runs with another search_path than it was planned with; shards
// are schemas, so one server statement shared by all shards would be
// re-planned in nearly every transaction. One per schema keeps its plan.
//
// In session pool mode a named statement keeps the client's name
// (clientName), as on a direct connection: the backend is the client's
// own, and Postgres re-plans it when it runs under another shard's
// search_path.
func (ss *session) serverStmt(def *stmtDef) string {
	if def.server == "" || def.clientName {
		return def.server
	}
	if def.tag != ss.wantTag {
		def.tag, def.tagged = ss.wantTag, def.server+"_"+ss.wantTag
	}
	return def.tagged
}

// trimPrepared closes client statements on the just attached backend when
// it holds more than Config.MaxPrepared, down to seven eighths of that,
// chosen at random (the router's own statements stay). No portal is open on
// it at this point, so none is closed with its statement.
func (ss *session) trimPrepared() {
	be, max := ss.be, ss.srv.cfg.MaxPrepared
	if len(be.Prepared) <= max {
		return
	}
	n := len(be.Prepared) - max*7/8
	for name := range be.Prepared {
		if n == 0 {
			break
		}
		if !isClientStmt(name) {
			continue
		}
		delete(be.Prepared, name)
		ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
		be.W.WriteFrame(wire.MsgClose, ss.out)
		ss.push(expect{kind: eClose, swallow: true})
		n--
	}
}

// isClientStmt reports whether a backend statement name is one made by
// Server.serverName (pgtenant_<number>...), not one of the router's own.
func isClientStmt(name string) bool {
	const p = "pgtenant_"
	return len(name) > len(p) && name[:len(p)] == p && name[len(p)] >= '0' && name[len(p)] <= '9'
}

// closeFirst queues a Close of the named statement before the router
// prepares it on the attached backend: what the router knows of a
// backend's statements can only err towards "missing" (it forgets them on
// DISCARD or DEALLOCATE even when the server skipped those), and closing a
// statement that does not exist is not an error, so the Parse cannot fail
// with 42P05.
func (ss *session) closeFirst(name string) {
	ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
	ss.be.W.WriteFrame(wire.MsgClose, ss.out)
	ss.push(expect{kind: eClose, swallow: true})
}
