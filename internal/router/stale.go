package router

import (
	"encoding/binary"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// A client statement is prepared on each backend it lands on. A server
// refuses to run a prepared statement whose result shape DDL changed since
// it was described ("cached plan must not change result type", 0A000), and
// drivers prepare it again; a statement the router prepares afresh on
// another backend after that DDL would instead get the new shape, and the
// client would decode its rows with the old description. So the router
// keeps a hash of what the client was told by a Describe of the statement
// (stmtDef.shape), and of what a Describe on a backend said of the server
// statement there (pool.Conn.Prepared's value: a server answers with the
// shape the statement was prepared with); it describes the statement again
// when the backend's is of a shape not known (prepared afresh, or by a
// client that never described it: one round trip, once per statement and
// backend; the common case, a statement already there and described,
// costs one comparison), and refuses its Bind or Describe with 0A000, as
// the server would, when the shape differs.
//
// A server analyses each Parse afresh; the router shares a server
// statement among the clients that parse the same text. So a schema
// change the router sends (ddlSent), or a statement a server found stale,
// makes every later Parse get a server statement of its own
// (Server.schemaChanged): a client's fresh Parse never meets a statement
// parsed before the change, which would fail with 0A000 or with the old
// parameter types (42804), and one parsed before it stays as it was, as
// on a server. A described client statement a server found stale stays so
// where it is of another shape (a server keeps failing it there), and runs
// where it is not (a server analyses a statement again under each run's
// search_path: another shard whose table did not change runs it), each
// backend's statement checked as above; one whose Describe told the client
// its parameters only (the server's 0A000 came next) stays stale everywhere,
// having no shape to check against. A Describe's 0A000 follows the
// statement's ParameterDescription, as from a server: postgres.js takes the
// statement as prepared at that message. Only a statement a Describe told
// the client of is marked stale, so the Describe of a stale one always has
// its ParameterDescription to send first; in transaction mode one a server
// found stale at a Bind is prepared afresh elsewhere, and a Describe of it
// gets the new shape where a server answers its parameters then 0A000 (not
// emulated: the client has no earlier shape to keep).

// staleError is the server's error for a prepared statement whose result
// shape changed (with its routine: postgres.js prepares the statement
// again on this one, as drivers do on the SQLSTATE).
func staleError() *wire.Error {
	return &wire.Error{Code: "0A000", Message: "cached plan must not change result type", Routine: "RevalidateCachedQuery",
		Hint: "The statement was prepared before its tables changed: prepare it again."}
}

// staleAnswer reports whether a server's ErrorResponse body says that a
// prepared statement's result shape changed.
func staleAnswer(body []byte) bool {
	if wire.ErrorCode(body) != "0A000" {
		return false
	}
	r := wire.ErrorRoutine(body)
	return r == "RevalidateCachedQuery" || r == ""
}

// schemaChanged makes every later Parse of a client reach a server
// statement of its own, analysed afresh (see above): the names shared by
// text are forgotten, and a client's unnamed statement is parsed again
// even when its text is the same.
func (s *Server) schemaChanged() {
	s.stmtGen.Add(1)
	s.stmtMu.Lock()
	clear(s.stmtIDs)
	s.stmtMu.Unlock()
}

// serverFoundStale notes a server's 0A000 for the client's statement
// e.stmt, bound or described as e.name on the attached backend: it is
// marked stale if a Describe told the client anything of it (a
// ParameterDescription at least: postgres.js then binds it without a
// description; one never described is prepared afresh, its rows the
// client's only description, as stale_test.go's "never described"), and
// refused where its shape differs (ensurePrepared); the
// backend's statement is prepared afresh at its next use (other clients'
// statements of the text are shape-checked then); and, the router having
// missed the schema change, later Parses get statements of their own,
// unless the statement was parsed before a change the router counted
// since (those Parses do already).
func (ss *session) serverFoundStale(e *expect) {
	def := e.stmt
	if def.shape != 0 || len(def.params) > 0 {
		def.stale = true
	}
	if isClientStmt(e.name) {
		delete(ss.be.Prepared, e.name)
	}
	if def.gen == ss.srv.stmtGen.Load() {
		ss.srv.schemaChanged()
	}
}

// skipRest, returned by ensurePrepared, says the server skips the message
// (an earlier error of the pipeline, answered already): the client's
// message is dropped, as the server would ignore it, until its Sync.
var skipRest = &wire.Error{Code: "XX000", Message: "skipped"}

// ensurePrepared queues a Parse of def on the attached backend unless it is
// there already. A statement the client had described, named or unnamed,
// is described again when it is prepared afresh, its answer awaited (a
// Flush), and its shape compared with the one the client saw: staleError
// when it changed. The unnamed statement too: a client (pgx's
// describe-exec mode) describes it in one transaction and binds it in the
// next, and when that lands on another backend (or one whose unnamed
// statement a setup Query dropped) a DDL in between would otherwise give
// rows of the new shape to a client decoding them with the old one (an
// int4 column made float4: wrong numbers, no error). The check costs one
// round trip, only when the statement is prepared afresh after a Describe.
func (ss *session) ensurePrepared(def *stmtDef) *wire.Error {
	if def.stale && def.shape == 0 {
		// Found stale when a Describe had told the client its parameters
		// only: no shape to check against.
		return staleError()
	}
	_, h := ss.prepareOn(def, true)
	switch {
	case def.shape == 0 || h == def.shape:
		// (Found stale elsewhere, the statement is checked where it runs,
		// as a server analyses it again under the search_path of each
		// run: another shard's table of the old shape runs it.)
		return nil
	case shapeAtRun(def.query):
		// A FETCH: its cursor's shape, whatever a Describe said before.
		return nil
	case h != 0:
		// Prepared there with another shape (another client's Parse of
		// the text after a schema change): what the server would refuse.
		def.stale = true
		return staleError()
	}
	ss.srv.m.ShapeChecks.Inc()
	name := ss.serverStmt(def)
	ss.out = wire.AppendTarget(ss.out[:0], 'S', name)
	ss.be.W.WriteFrame(wire.MsgDescribe, ss.out)
	ss.push(expect{kind: eDescS, swallow: true, name: name, stmt: def})
	ss.be.W.Write(wire.FlushMsg)
	wasStale := def.stale
	def.stale = false // noteShape sets it when this backend's shape differs
	if err := ss.drain(true); err != nil {
		def.stale = def.stale || wasStale
		return ss.clientFailed(err)
	}
	differs := def.stale
	def.stale = differs || wasStale
	if differs && name == "" && ss.be != nil {
		// The backend's unnamed statement is def's text of another shape,
		// not what the client described (prepareOn takes it for that).
		ss.be.ForgetUnnamed()
	}
	switch {
	case ss.be == nil || ss.skipToSync:
		return skipRest
	case differs:
		return staleError()
	}
	return nil
}

// noteShape hashes a Describe's answer for the client's statement e.stmt:
// the shape the client is told (a Describe it sent), or the shape checked
// against it (the router's own, swallowed); it returns the hash when the
// answer is complete (0 before), which is the shape of the server
// statement be holds (a server answers a Describe with the shape the
// statement was prepared with, or 0A000).
func noteShape(e *expect, typ byte, body []byte) uint64 {
	def := e.stmt
	switch typ {
	case wire.MsgParamDesc:
		def.pending = shapeHash(fnvOffset, body)
		if !e.swallow {
			def.params = append(append(def.params[:0], typ, 0, 0, 0, 0), body...)
			binary.BigEndian.PutUint32(def.params[1:], uint32(4+len(body)))
		}
		return 0
	case wire.MsgRowDescription, wire.MsgNoData:
	default:
		return 0
	}
	h := def.pending
	if h == 0 {
		h = fnvOffset
	}
	def.pending = 0
	h = rowShapeHash((h^uint64(typ))*fnvPrime, body)
	if h == 0 {
		h = 1 // 0: not described
	}
	if !e.swallow {
		def.shape = h
	} else if h != def.shape {
		def.stale = true
	}
	return h
}

const (
	fnvOffset uint64 = 14695981039346656037
	fnvPrime  uint64 = 1099511628211
)

// shapeHash is 64-bit FNV-1a of b, continuing from h.
func shapeHash(h uint64, b []byte) uint64 {
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime
	}
	return h
}

// rowShapeHash hashes what a RowDescription says of the result's shape:
// the column count and each column's name, type OID, length, modifier and
// format, not the table OID and column number it comes from (a table made
// again with the same columns gives the same shape, as on a server).
func rowShapeHash(h uint64, body []byte) uint64 {
	if len(body) < 2 {
		return shapeHash(h, body)
	}
	h = shapeHash(h, body[:2])
	n := int(binary.BigEndian.Uint16(body))
	b := body[2:]
	for i := 0; i < n; i++ {
		end := 0
		for end < len(b) && b[end] != 0 {
			end++
		}
		if end+1+18 > len(b) {
			return shapeHash(h, body) // malformed: all of it
		}
		h = shapeHash(h, b[:end+1])       // the name and its NUL
		h = shapeHash(h, b[end+7:end+19]) // type OID, length, modifier, format
		b = b[end+19:]
	}
	return h
}
