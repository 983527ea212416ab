package router

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"syscall"
)

// Direct SSL negotiation (PostgreSQL 17+, libpq's and node-postgres's
// sslnegotiation=direct): the client starts the TLS handshake at once,
// without an SSLRequest, and names the ALPN protocol "postgresql".

// tlsRecordHandshake is the first byte of a TLS ClientHello.
const tlsRecordHandshake = 0x16

// alpnPostgres is the ALPN protocol of a direct SSL connection.
const alpnPostgres = "postgresql"

// startsTLS reports whether the first byte the client sent begins a TLS
// handshake, without consuming it (MSG_PEEK; the connection's read deadline
// applies). A connection that is not a socket is never a direct one.
func startsTLS(nc net.Conn) (bool, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	var b [1]byte
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return !errors.Is(rerr, syscall.EAGAIN)
	})
	if err == nil {
		err = rerr
	}
	return err == nil && n == 1 && b[0] == tlsRecordHandshake, err
}

// directTLS runs the server side of a direct SSL handshake on nc. As
// PostgreSQL does, it refuses a client that did not negotiate the ALPN
// protocol "postgresql" (08P01, over TLS).
func (s *Server) directTLS(ctx context.Context, nc net.Conn) (*tls.Conn, func() []byte, error) {
	tcfg, cb := s.tlsConfig()
	tcfg = tcfg.Clone()
	tcfg.NextProtos = []string{alpnPostgres}
	tc := tls.Server(nc, tcfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, nil, err
	}
	if tc.ConnectionState().NegotiatedProtocol != alpnPostgres {
		writeFatal(tc, "08P01", "received direct SSL connection request without ALPN protocol negotiation extension")
		tc.Close()
		return nil, nil, errors.New("direct SSL without ALPN")
	}
	return tc, cb, nil
}
