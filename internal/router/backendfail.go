package router

import (
	"errors"
	"fmt"

	"github.com/pgtenant/pgtenant/internal/pool"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// backendFailed handles a read/write error on the attached backend.
func (ss *session) backendFailed(err error) {
	be := ss.be
	ss.srv.log.Warn("backend connection failed", "session", ss.id, "node", be.Node(), "err", err, "reason", be.KillReason())
	ss.lostBackend(killError(be, err))
}

// killError is the error a client gets when its backend failed or was cut.
func killError(be *pool.Conn, err error) *wire.Error {
	var fe *fencedError
	reason := be.KillReason()
	switch {
	case errors.As(reason, &fe):
		return &wire.Error{Code: "40001", Message: fmt.Sprintf("the transaction was cut: %v", fe), Hint: "Retry the transaction."}
	case reason != nil && errors.Is(reason, errShutdown):
		return &wire.Error{Severity: "FATAL", Code: "57P01", Message: "the router is shutting down"}
	}
	// err (addresses, the server's words) is in the router's log (see
	// backendFailed); the client gets the node's name.
	return &wire.Error{Code: "08006", Message: fmt.Sprintf("lost the connection to node %q", be.Node()),
		Hint: "The transaction, if any, was rolled back; retry it. The router's log has the details."}
}

// nodeUnreachableError is the error a client gets when no backend
// connection to node could be opened; the reason, which names the node's
// host and user, goes to the router's log only.
func nodeUnreachableError(node string) *wire.Error {
	return &wire.Error{Code: "08006", Message: fmt.Sprintf("node %q is unreachable", node),
		Hint: fmt.Sprintf("Retry later. The router's log has the details; `pgtenant node check %s` tests the node.", node)}
}

// nodeRefusedError is the error a client gets when the node's server was
// reached but refused a new backend connection with code (see
// pool.RefusedCode): the server's SQLSTATE, so that a client tells a full
// or restarting node, worth a retry soon, from one that cannot be reached.
func nodeRefusedError(node, code string) *wire.Error {
	if code == "57P03" {
		return &wire.Error{Code: code, Message: fmt.Sprintf("node %q is not accepting connections now (starting up, shutting down or in recovery)", node),
			Hint: "Retry later. The router's log has the details."}
	}
	return &wire.Error{Code: code, Message: fmt.Sprintf("node %q refused a new backend connection for lack of resources (its max_connections or a connection limit reached)", node),
		Hint: "Retry later; or raise the node's max_connections, or lower the routers' pool size (pgtenant router --pool-size): every router's pool, and every other client of the node, shares its connection slots."}
}

// lostBackend drops the backend and answers every queued response with one
// error (and the ReadyForQuery messages the client waits for).
func (ss *session) lostBackend(werr *wire.Error) {
	if werr == nil {
		werr = &wire.Error{Code: "08006", Message: "lost the backend connection"}
	}
	wasTxn := ss.be != nil && ss.status != 'I'
	if ss.be != nil {
		ss.be.MarkBroken()
		ss.releaseBackend()
	}
	if wasTxn {
		ss.failed = true
	}
	ss.status = 'I'
	ss.srv.m.Errors.WithLabelValues("router", sqlstateClass(werr.Code)).Inc()
	ss.cw.Write(wire.AppendError(ss.out[:0], werr))
	n := 0 // the ReadyForQuery messages the client waits for
	for i := range ss.queue {
		switch q := &ss.queue[i]; q.kind {
		case eSync, eQuery:
			if !q.swallow {
				n++
			}
		case eSynthRFQ:
			n++
		}
	}
	clear(ss.queue)
	ss.queue = ss.qbuf[:0]
	ss.syncs = 0
	if n == 0 {
		ss.skipToSync = true
	}
	for i := 0; i < n; i++ {
		ss.cw.Write(wire.AppendReadyForQuery(ss.out[:0], ss.localStatus()))
	}
}

// clientFailed records a drain error (the client's connection failed:
// drain reports nothing else) and returns the error that ends the
// session; the Go error stays out of the message. Nothing more reaches
// the client, and the loop must not wait for the backend, which may be
// waiting for the client itself (the rest of a COPY FROM STDIN the client
// gave up on): the session ends at once and its backend, with answers
// still queued or a transaction open, is closed (session.end).
func (ss *session) clientFailed(err error) *wire.Error {
	if ss.clientErr == nil && !errors.Is(err, errBackendFatal) {
		ss.clientErr = err
	}
	return &wire.Error{Severity: "FATAL", Code: "08006", Message: "connection failure"}
}
