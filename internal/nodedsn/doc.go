// Package nodedsn keeps secrets out of the node connection strings stored in
// the catalog. A stored DSN may name its password (or any other value) as a
// reference, $NAME or ${NAME}, that the process which connects (the router,
// the CLI) resolves from a secrets file or its environment; or it may carry
// no password at all, which pgx then reads from a passfile (passfile=… in the
// DSN, PGPASSFILE, or ~/.pgpass). It also tells whether a DSN carries a
// literal password, so `node add` can warn about it.
package nodedsn
