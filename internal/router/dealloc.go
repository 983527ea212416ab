package router

import (
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// stmtsDropped looks at the error the server answered a Bind or Describe of
// statement name with. A 26000 (no such prepared statement) for one of the
// router's names means its statements were dropped behind its back: a
// function or a DO block that builds its text ran DEALLOCATE (the router
// refuses the statement, but cannot see into function bodies). The router
// then forgets every statement of its own on that backend, so that each is
// closed and prepared again before its next use (closeFirst; a statement a
// function prepared under one of its names is replaced too; routerStmtPrefix), in
// transaction mode closes the backend when it goes back to the pool, and
// returns the error to send the client instead of the server's, which names
// a statement the client never saw. It returns nil for any other error.
func (ss *session) stmtsDropped(name string, body []byte) []byte {
	if !strings.HasPrefix(name, routerStmtPrefix) || wire.ErrorCode(body) != "26000" {
		return nil
	}
	be := ss.be
	for k := range be.Prepared {
		if strings.HasPrefix(k, routerStmtPrefix) {
			delete(be.Prepared, k)
		}
	}
	if ss.srv.cfg.PoolMode == PoolTransaction {
		ss.dropBackend = true
	}
	ss.srv.log.Warn("the router's prepared statements were dropped on a backend", "session", ss.id, "node", be.Node(), "statement", name)
	return wire.AppendError(nil, &wire.Error{Code: "26000",
		Message: "the router's prepared statements on this server connection were dropped behind its back (DEALLOCATE in a function or DO block)",
		Hint:    "Retry the transaction: the router prepares its statements again. Do not run DEALLOCATE in functions or DO blocks through pgtenant: the router manages the prepared statements of its server connections."})[5:]
}
