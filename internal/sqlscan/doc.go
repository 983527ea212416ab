// Package sqlscan holds the router's knowledge of SQL that needs a real
// parser: which statements need no shard (they read only the system
// catalogs and call functions that touch no table), decided with
// PostgreSQL's own parser (pg_query_go) and cached by statement text; and
// how PostgreSQL spells an identifier back (QuoteIdentifier, with its
// keyword list as data in keywords.txt).
package sqlscan
