// Package nodestats reads one node's health from PostgreSQL's own statistics
// views: cache and index hit rates, connections by state, the longest running
// transaction, replication slots and followers with their lag, database size,
// disk free where visible, dead tuples and the tables most in need of vacuum,
// and the slowest statements when pg_stat_statements is installed.
//
// Collect runs as the node DSN's role, which is not a superuser, and reads
// only what such a role may read. Each field's doc comment names its source
// and the privilege it needs; what the role cannot see is reported as not
// visible (a nil pointer, a "not visible" state, a line in Stats.Notes),
// never guessed. Collect writes nothing and needs no extension.
package nodestats
