// Package router is pgtenant's PostgreSQL wire-protocol router: it accepts
// client connections (package wire does the protocol plumbing), works out
// which tenant each transaction is for, and relays the transaction to a
// backend connection (package pool) on the node that holds the tenant's
// shard, with search_path set to the shard's schema and pgtenant.tenant_id
// set to the tenant for row-level security.
//
// The router does not read the catalog. It is handed immutable
// placement.Map snapshots with SetMap, which also implements the fence hook
// used by online shard moves: new transactions for a fenced shard are held
// until a later map releases it.
//
// # Tenant selection
//
// Most specific first: a /* tenant: acme */ comment in the statement; SET
// LOCAL pgtenant.tenant (this transaction); SELECT set_config(
// 'pgtenant.tenant', $1, is_local) (with a literal or bind parameter); SET
// pgtenant.tenant (the session); the startup parameter (options=-c
// pgtenant.tenant=acme, or a plain pgtenant.tenant parameter). SHOW and RESET
// pgtenant.tenant are answered by the router.
//
// # Schema changes
//
// A schema change (stmtInfo.ddl: CREATE, ALTER or DROP of anything but a
// temporary object or one outside the shard's schema such as a role,
// schema or database; COMMENT ON; GRANT or REVOKE ... ON) sent for a tenant
// changes that tenant's shard only; so do SELECT ... INTO a table, EXPLAIN
// ANALYZE CREATE TABLE ... AS, and such a statement in a DO block (or a
// string it EXECUTEs: guard's scan, bodyDDL), not one in a function it
// calls. The lexer decides from the first words of each statement
// (testdata/ddl_cases.json); statements with a tenant are never parsed. Config.DDL says what follows (ddl.go): DDLWarn, the
// default, runs it and queues a NoticeResponse (WARNING, 01000, the shard
// named, a hint naming pgtenant migrate up) before the statement's answer
// (before its BindComplete in the extended protocol, so once per Bind);
// DDLRefuse answers 0A000 with that hint and runs nothing (an error of the
// router's own: the transaction is aborted, a pipeline skips to its Sync);
// DDLAllow runs it silently. A schema change without a tenant gets 3D000
// whose hint names pgtenant migrate up; a restricted user's is refused
// (42501) with the same hint.
//
// # Transactions and pooling
//
// In transaction mode (the default) a backend connection is checked out for
// one transaction and returned when the server reports ReadyForQuery idle.
// BEGIN is deferred until the first statement that needs a shard, so
// "BEGIN; SET LOCAL pgtenant.tenant = 'x'; ..." works. A transaction is bound
// to one tenant: naming another tenant inside it is refused with SQLSTATE
// 25001.
//
// A pooled backend's search_path and pgtenant.tenant_id are set where it
// lacks them (the pool hands out the most recently used connection, not one
// on the right schema: warm server caches are worth more). In transaction
// mode a backend another client held last is taken to lack the tenant id,
// and the path too unless its server reports search_path (PostgreSQL 18):
// that client's functions may have set either for the session. The setup
// goes within the client's own round trip:
//   - before a Bind of a single DML statement (SELECT, INSERT, UPDATE,
//     DELETE, WITH, VALUES, TABLE, MERGE), as Bind/Execute of a statement
//     prepared once per connection, in that statement's implicit
//     transaction (no statement text for the server to parse);
//   - before a Parse or Describe of DML, the same ahead of the Parse when
//     the client's whole pipeline is buffered and binds only that statement
//     (parselook.go); otherwise as Bind/Execute of the session setup with a
//     Sync of the router's own, so that whatever the client binds next finds
//     no transaction block the router opened;
//   - in transaction mode, before a simple Query of one DML statement
//     outside a transaction block, in the Query's own text (combined.go:
//     "DISCARD TEMP;SET LOCAL search_path = ...;SET LOCAL
//     pgtenant.tenant_id = ...;" then the client's), one implicit
//     transaction; pg_stat_activity shows that text;
//   - with a deferred plain BEGIN in transaction mode, as Bind/Execute of
//     prepared BEGIN and transaction-local set_config statements (a BEGIN
//     with options goes as a Query with the settings);
//   - otherwise as a Query of its own, pipelined before the client's.
//
// In transaction mode the settings are transaction-local wherever they
// share the client's transaction (a Bind, the Parse seen with its pipeline,
// the combined Query, a deferred BEGIN): the backend's session search_path
// does not change, so the server does not re-plan the setup statement
// (Postgres re-analyses a prepared statement whenever the search_path
// differs from the one it was planned with). A setup with a Sync of its own,
// or a Query of its own, sets them for the session. Once a pipeline
// holds a statement that may end the transaction or undo settings (COMMIT,
// ROLLBACK, PREPARE TRANSACTION, ROLLBACK TO, RESET ALL, a statement that
// is not DML in an implicit transaction), every statement after it gets
// the settings again (in a portal of the router's own when the client has
// bound the unnamed one); before CALL or DO there the backend gets them as
// session settings, so a procedure's work after its own COMMIT stays on
// the shard (after its own ROLLBACK it is not covered). No setup goes
// before a transaction control statement or into an aborted transaction
// (the server would refuse it, and skip the client's ROLLBACK with it); it
// waits for the next statement. In transaction mode
// a simple Query that ends the transaction it runs in and goes on with more
// statements ("COMMIT; BEGIN; ...") is refused with 0A000. In session mode
// they are
// session settings; a setup whose transaction fails is forgotten and sent
// again. While such a transaction is open the router answers each Query
// and Sync before it reads the client's next message, so nothing pipelined
// behind it runs with the settings it may revert.
//
// Session settings (SET outside a transaction, as a simple Query or with
// Parse/Bind/Execute, and startup parameters such as application_name) are
// recorded per client and replayed on whichever backend the client lands on.
// A SET runs on a backend first (the tenant's, or any node's) and is
// recorded only when the server accepts it, so a bad value fails at once
// (RESET ALL first when the backend carries another client's settings).
// The same holds for SET, RESET and SELECT set_config('x', 'v', false)
// among several statements of one query string (multiset.go): each is
// recorded when its statement completes and kept when its transaction
// commits (an error or ROLLBACK drops it, as the server does); SET LOCAL
// never is. A SET of search_path or pgtenant.tenant after another
// statement of the string is refused (0A000), even where it is allowed
// alone: the router sets the path and tenant query by query, not between
// the statements of one (a RESET search_path in a string would leave the
// statements after it on the server's default path, not the shard's), and
// the hint says to send it as a query of its own. A SAVEPOINT, RELEASE or
// ROLLBACK TO in a string is a mark among the transaction's SETs as a lone
// one is (savepoint.go); a session SELECT set_config('x', $1, false) by
// Parse/Bind/Execute is recorded with the Bind's value (bindSetConfig).
// search_path, role and pgtenant.* other than
// pgtenant.tenant are owned by the router and refused (see Isolation),
// except that in session mode a client may own its search_path (see below).
// LISTEN is refused in transaction mode; use session mode. (A notification
// reaching a transaction-mode backend, from a LISTEN in a DO block, goes to
// no client, and the backend is closed when its transaction ends.)
//
// BEGIN/COMMIT/ROLLBACK are deferred or answered the same way whether they
// come as a simple Query or as Parse/Bind/Execute. SELECT set_config(
// 'pgtenant.tenant', v, is_local) in exactly that form is answered by the
// router without a backend round trip. In session mode the backend is kept
// while the client switches between tenants on one node; switching to
// another node resets it (DISCARD ALL) and returns it to the pool.
//
// A transaction whose backend is cut (by a fence after Config.FenceGrace, or
// because the node failed) fails with 40001 or 08006; the client sees an
// aborted transaction until it ends it, as with PostgreSQL itself. The
// client's database name is checked only when Config.Database is set (the
// node DSNs decide the shards' database either way); replication
// connections are refused.
//
// Named prepared statements (protocol-level Parse) work in transaction mode:
// the router records each client's statements and prepares them, under
// router-unique names (pgtenant_N...), on whichever backend a Bind or
// Describe lands on:
// one server statement per statement text and shard schema, so Postgres
// keeps each one's plan (it re-plans a statement run under another
// search_path than it was planned with, and shards are schemas). At most
// Config.MaxPrepared stay prepared on a backend; past that some are
// closed when a client next gets it.
// In session mode a named statement keeps the client's name on the server,
// as on a direct connection (pg_prepared_statements shows it; Postgres
// re-plans it under another shard's search_path): a name starting with
// pgtenant_, the prefix of the router's own statements, is refused there
// (42939; in SQL PREPARE, EXECUTE and DEALLOCATE too), and a name made with
// SQL PREPARE shares the namespace (a Parse of it is 42P05; the router
// learns those names from each CommandComplete PREPARE); after a switch to another node the client's statements are
// prepared again on the new backend when next used. The session-mode
// backend's DISCARD ALL at the client's end must succeed, or the backend
// is closed.
// When the client's tenant is known at Parse, the Parse also goes to that
// tenant's backend at once and the server's answer (ParseComplete or an
// error) is the client's; without a tenant the router answers ParseComplete
// itself and an invalid statement's error comes at its first Bind or
// Describe.
//
// # Isolation
//
// A shard's search_path is "shard_NNNN", Config.SharedSchema (default
// public; extensions and reference tables), pg_temp: pg_temp last and
// explicit, since Postgres searches it first when it is left out and a
// temporary table would shadow the shard's.
//
// In session mode a client may own its search_path (ownsPath): a startup
// search_path, SET [LOCAL] search_path, RESET search_path and SELECT
// set_config('search_path', v, b), each a statement of its own, go to the
// server; once the client has set it the router sets no shard path for the
// session (tenant switches included: it is replayed with the client's other
// SETs), until RESET search_path, SET search_path TO DEFAULT, RESET ALL or
// DISCARD ALL give the shard path back. Users restricted to a tenant
// (Config.Access) cannot; their role reaches only their shard anyway.
//
// Nothing a client leaves on a backend may reach another client. In
// transaction mode a backend serves other clients as soon as a transaction
// ends, so the router refuses, with 0A000 and a hint, what would outlive
// the transaction: CREATE TEMP objects other than tables ON COMMIT DROP
// (also a name in pg_temp, SELECT INTO TEMP), SQL PREPARE and EXECUTE
// (drivers' protocol-level prepared statements work), DECLARE ... WITH
// HOLD, session-level advisory locks. DEALLOCATE of a client's protocol-level statement is answered by
// the router (ActiveRecord sends it). What the lexer cannot see, a
// temporary table made by a function or DO block, is dropped: every
// backend taken from the pool in transaction mode gets DISCARD TEMP (a
// statement prepared once per backend, bound in the client's first round
// trip, inside the transaction of the client's first statement, so it costs
// no round trip; within that transaction nothing of the previous client is
// visible, and should it roll back, the next transaction cleans again).
// Cleaning on checkout rather than refusing more keeps functions that use
// temporary tables working; cleaning rather than closing keeps the
// connection. In session mode a client owns its backend until it leaves;
// then DISCARD ALL resets it (temporary objects, prepared statements,
// cursors, settings, listens, advisory locks, sequences' cached values); a
// backend given up any other way is closed. A session that switches tenants
// on one node keeps its backend and its temporary objects: they are the
// client's own, as on a direct connection (pg_temp last keeps them from
// shadowing the new shard's tables).
//
// Two different /* tenant: */ hints in one query string are refused with
// 25001. The settings the router owns cannot be changed by a client in any
// statement of a text: SET/RESET of search_path, role, session
// authorization or pgtenant.* (not pgtenant.tenant) in any spelling,
// set_config of them (quoted, qualified, E'...' or dollar-quoted names; a name
// that is not a literal or a bind parameter is refused too; parameters are
// checked at Bind), the same inside DO bodies and the strings EXECUTE runs
// there, UPDATE of pg_settings, and EXECUTE of the router's own prepared
// statements: 0A000 with a hint. set_config('app.x', v, true) of other
// settings, the row-level-security idiom, works. The limit: what a
// function or procedure body runs (set_config, SET, dynamic SQL) is not
// visible to the router; against hostile SQL the defence is a restricted
// Postgres role, not the lexer.
//
// A client idle inside a transaction (or with extended-protocol work not
// yet ended by Sync) longer than Config.IdleInTransactionTimeout (60 s by
// default) gets FATAL 25P03 as from Postgres; its transaction is rolled
// back and its backend goes back to the pool (closed, for unsynced work).
//
// Errors the router makes from Go errors (a node that cannot be reached, a
// backend connection lost) name the node and carry a SQLSTATE and a hint;
// addresses, users and the server's words go to the router's log only.
//
// # I/O
//
// One goroutine per client does all of that session's work; sockets are
// read and written with raw system calls that still park in Go's poller
// (wire.RawIO). A request to a backend that had answered everything before
// is written inside the wait for its answer, and the read(2) that would
// find nothing before the server had time to answer is skipped
// (wire.Reader.ReadMessageAfter): one system call less per round trip to
// the server. A client's next message is read as before (a read first, the
// poller on EAGAIN): a client may have sent it already, and a wait without
// that read could miss it.
//
// # Authentication
//
// scram-sha-256 (the default), md5 or trust, for users in Config.Users
// (plaintext passwords) or known to Config.Credentials (stored SCRAM
// verifiers or md5 hashes, as PostgreSQL keeps them).
//
// # Differential tests
//
// differential_test.go sends the same seeded, generated sequences of
// frontend messages (differential_gen_test.go: simple Query of one or
// several statements, empty and comment-only queries, Parse/Bind/Describe/
// Execute with max rows/Close/Flush/Sync on named and unnamed statements
// and portals, errors mid-pipeline, transaction control, savepoints, SET,
// SET LOCAL, RESET, temporary tables, DML on a shard table) to PostgreSQL
// directly (search_path and pgtenant.tenant_id as the router sets them)
// and through a router in each pool mode, and compares the answers:
// message types in order, tags, rows, SQLSTATEs, ReadyForQuery status.
// The differences the router makes and the test accepts are listed with
// their reasons (diffKnown); sequences that showed a bug are kept as cases
// (differential_cases_test.go). CI runs 300 seeds (-diffseeds N, one with
// -diffseed S); FuzzDifferential takes any seed (go test -fuzz).
//
// # SQLSTATEs sent by the router itself
//
//	3D000  no tenant selected (the hint says how to select one, or, for a schema change, to use migrate up)
//	01000  (WARNING) a schema change sent for a tenant changes its shard only (Config.DDL warn)
//	0A000  a schema change sent for a tenant, with Config.DDL refuse
//	0A000  RESET ALL followed by more statements in one query (they would run without the shard's path)
//	42704  unknown tenant (register it with `pgtenant tenant add ID`)
//	22023  invalid tenant id
//	25001  the transaction is bound to another tenant
//	0A000  feature not supported (LISTEN in transaction mode, reserved settings (search_path: in transaction mode, or in a form the router cannot follow), replication
//	       connections, in transaction mode a Query with statements after the COMMIT or ROLLBACK of its
//	       transaction, temporary objects that outlive a transaction, SQL PREPARE/EXECUTE, WITH HOLD)
//	25001  also: two different tenant hints in one query string
//	25P03  idle in a transaction, or with work not yet ended by Sync, longer than
//	       Config.IdleInTransactionTimeout (FATAL)
//	26000  DEALLOCATE of a prepared statement the client does not have
//	3D000  also: a database name other than Config.Database
//	42601  a malformed BEGIN or SET TRANSACTION the router would defer (as the server words it)
//	42P05  Parse of a statement name in use; 26000 DEALLOCATE of a name that does not exist
//	01000  (WARNING at connect) a startup setting the router owns (role, session_authorization,
//	       pgtenant.* but pgtenant.tenant, search_path in transaction mode), ignored
//	42939  session mode: a statement name starting with pgtenant_ (the router's own), in Parse or SQL
//	       PREPARE, EXECUTE, DEALLOCATE
//	0A000  also: standard_conforming_strings off or a client encoding the router cannot read text in
//	       (lexsafe.go; FATAL when a backend reports one), session-level advisory locks in transaction
//	       mode, PREPARE or DEALLOCATE inside a DO block, SET SCHEMA, a FunctionCall message (libpq's
//	       fast path: its lo_* large-object functions; ReadyForQuery follows, the session goes on)
//	08006  the tenant's node is unreachable or the backend connection failed
//	53300  too many clients, or no backend connection free within the wait timeout
//	57014  a cancel request while the statement waited for a backend from the pool, or a fenced shard
//	40001  the shard is being moved (held too long, or its transaction or unsynced pipeline was cut)
//	28P01  authentication failed
//	08P01  protocol violation (malformed or oversized message; a direct TLS handshake without the ALPN
//	       protocol postgresql)
//	57P01  the router is shutting down
package router
