// Package localpg starts and stops real PostgreSQL servers from the machine's
// own binaries (initdb and pg_ctl), on loopback ports, in directories it is
// given. It serves the `pgtenant dev` cluster and every test that needs a
// server. When the caller is root it runs the server as the "postgres" OS
// user, since Postgres refuses to run as root.
package localpg
