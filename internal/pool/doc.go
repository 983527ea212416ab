// Package pool keeps backend connections to one PostgreSQL node: checkout
// with a bounded wait, a size limit, minimum idle connections, idle and
// lifetime limits, and health (a connection that failed is discarded, never
// reused). Connections are opened with pgconn (which speaks SCRAM and TLS to
// the server) and then hijacked: the router relays raw protocol frames over
// them.
package pool
