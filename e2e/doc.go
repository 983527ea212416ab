// Package e2e holds end-to-end tests of the router with real clients: pgx in
// every query exec mode, the psql binary, and node-postgres from npm, all
// talking through an in-process router to two real Postgres servers that act
// as two nodes. It has no non-test code.
package e2e
