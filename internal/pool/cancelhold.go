package pool

import (
	"io"
	"time"
)

// CancelHold is the longest a write to a connection waits for a cancel
// request in flight to its server (see Conn.Cancel), so that a cancel the
// server is slow to take cannot stall its client for long.
const CancelHold = time.Second

// holdWriter is what a Conn's W writes to: it holds each write while a
// cancel request for the connection is on its way (up to CancelHold).
//
// PostgreSQL answers a CancelRequest by signalling the backend twice
// (postmaster.c's signal_child: SIGINT to the pid, then to its process
// group). A statement that reaches the backend after the first signal ended
// the one cancelled, and before the second, is cancelled too. The server
// closes the cancel connection once both are sent, and a backend waiting for
// a command when a signal lands ignores it: a message written after the
// close is never cancelled by that request.
type holdWriter struct {
	c *Conn
	w io.Writer
}

func (h *holdWriter) Write(p []byte) (int, error) {
	if ch := h.c.cancelling.Load(); ch != nil {
		// Rare: one timer per write held. The wait may be inside the
		// socket's read callback (wire.Reader.ReadMessageAfter flushes
		// there), which holds a Close of the socket (Kill) as long.
		t := time.NewTimer(CancelHold)
		select {
		case <-*ch:
		case <-t.C:
			// The request is stuck: later writes go at once (a client
			// waits CancelHold once per request, not once per write).
			h.c.cancelling.CompareAndSwap(ch, nil)
		}
		t.Stop()
	}
	return h.w.Write(p)
}

// holdWrites makes writes to c wait until the returned function is called
// (or CancelHold has passed).
func (c *Conn) holdWrites() func() {
	ch := make(chan struct{})
	c.cancelling.Store(&ch)
	return func() {
		c.cancelling.CompareAndSwap(&ch, nil)
		close(ch)
	}
}
