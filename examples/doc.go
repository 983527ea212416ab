// Package examples holds small apps on pgtenant (Go with pgxpool, Node.js
// with Express and node-postgres, Ruby with ActiveRecord) and, in its test,
// the harness that runs each one's own tests against a local cluster started
// the way a new user starts one: `pgtenant dev up`, `migrate up`,
// `tenant add`, then the app with only DATABASE_URL pointing at the router.
package examples
