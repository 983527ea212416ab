// Package suiterun holds what the driver-suite runners (e2e/pgxsuite,
// e2e/nodepgsuite, e2e/rubypgsuite, e2e/pgjssuite) share: a command's main and its work
// directory, the local cluster and the routers per pool mode that a
// driver's own tests run through, and the expected-failure lists (each
// entry with its reason) that their results are compared with.
//
// It is not imported by pgtenant itself: it runs pgtenant's binary.
package suiterun
