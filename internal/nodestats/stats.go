package nodestats

import "time"

// Stats is one node's health as its database's role sees it. It is a plain
// struct with JSON tags: `pgtenant node stats --json` prints it and the
// console draws it. Counters are cumulative since the reset times given
// (StatsReset, Statements.StatsReset) or, when never reset, since the server
// started (StartedAt).
type Stats struct {
	// CollectedAt is the server's clock when Collect started (clock_timestamp()).
	CollectedAt time.Time `json:"collected_at"`
	// Database is the node's database (current_database()).
	Database string `json:"database"`
	// User is the role Collect ran as (current_user).
	User string `json:"user"`
	// ServerVersion is the server_version setting, e.g. "15.8 (Debian 15.8-1)".
	ServerVersion string `json:"server_version"`
	// StartedAt is pg_postmaster_start_time().
	StartedAt time.Time `json:"started_at"`
	// InRecovery is pg_is_in_recovery(): the node is a standby.
	InRecovery bool `json:"in_recovery"`
	// Monitor says whether the role has the privileges of pg_read_all_stats
	// (pg_monitor includes it; a superuser has them): without them the
	// state, transaction and query of other roles' sessions, and the lag
	// columns of other roles' walsenders, are not visible.
	Monitor bool `json:"monitor"`
	// StatsReset is pg_stat_database.stats_reset for the database: when its
	// counters (DatabaseCache, and pg_stat_reset() also the per-table ones)
	// were last reset; nil when never.
	StatsReset *time.Time `json:"stats_reset"`

	// Cache is the heap cache hit rate of the database's user tables:
	// sum(heap_blks_hit) and sum(heap_blks_read) over pg_statio_user_tables
	// (the number Heroku's pg:diagnose calls "cache hit rate"). Readable by
	// any role, for every table.
	Cache HitRate `json:"cache"`
	// IndexCache is the index cache hit rate of the user tables' indexes:
	// sum(idx_blks_hit) and sum(idx_blks_read) over pg_statio_user_indexes.
	// Readable by any role.
	IndexCache HitRate `json:"index_cache"`
	// DatabaseCache is the hit rate of every block the database read,
	// catalogs, TOAST and indexes included: blks_hit and blks_read of the
	// database's row in pg_stat_database. Readable by any role.
	DatabaseCache HitRate `json:"database_cache"`

	// Connections counts the sessions connected to the database by state.
	Connections Connections `json:"connections"`
	// LongestTransaction is the session of the database, other than
	// Collect's own, whose transaction started first (pg_stat_activity
	// xact_start); nil when none is in a transaction. Only sessions whose
	// transaction the role may see count (its own roles', or all with
	// Monitor).
	LongestTransaction *Transaction `json:"longest_transaction"`

	// WALPosition is the server's current WAL position (pg_current_wal_lsn(),
	// or pg_last_wal_replay_lsn() on a standby) that slot and follower lags
	// are measured against.
	WALPosition string `json:"wal_position"`
	// Slots are the server's replication slots, of every database
	// (pg_replication_slots, readable by any role). Never null.
	Slots []Slot `json:"replication_slots"`
	// Followers are the walsenders streaming from the server: physical
	// standbys and logical subscribers (pg_stat_replication). Every role
	// sees their rows; positions and lags only for its own roles' or with
	// Monitor. Never null.
	Followers []Follower `json:"followers"`

	// DatabaseBytes is pg_database_size(current_database()): needs CONNECT
	// on the database (which the node's role has) or pg_read_all_stats.
	DatabaseBytes int64 `json:"database_bytes"`
	// Disk is the free space of the file system holding the data directory,
	// where visible.
	Disk Disk `json:"disk"`

	// Vacuum is dead tuples and the tables most in need of vacuum.
	Vacuum Vacuum `json:"vacuum"`
	// Statements are the statements that took the most time, from
	// pg_stat_statements when it is installed in the database.
	Statements Statements `json:"statements"`

	// Notes say in words what the role could not see and what would show
	// it, e.g. "3 sessions of other roles: state not visible (grant pg_monitor
	// to app)". Never null.
	Notes []string `json:"notes"`
}

// HitRate is a cache hit rate from a pair of block counters.
type HitRate struct {
	// Hit is the number of block requests found in shared buffers.
	Hit int64 `json:"hit"`
	// Read is the number of blocks read from the kernel (which may still
	// have had them in its page cache).
	Read int64 `json:"read"`
	// Rate is Hit/(Hit+Read), between 0 and 1; nil when both are 0.
	Rate *float64 `json:"rate"`
}

// newHitRate computes the rate of a pair of counters.
func newHitRate(hit, read int64) HitRate {
	h := HitRate{Hit: hit, Read: read}
	if hit+read > 0 {
		r := float64(hit) / float64(hit+read)
		h.Rate = &r
	}
	return h
}

// StateNotVisible is the state counted for sessions whose state the role
// may not see (other roles' sessions, without pg_read_all_stats).
const StateNotVisible = "not visible"

// Connections counts client sessions, from pg_stat_activity (backend_type
// 'client backend'). Every role sees every session; the state of other
// roles' sessions only with Monitor (without it, their parallel workers and
// walsenders, hidden as well, count as sessions too).
type Connections struct {
	// Database is the number of client sessions connected to the database,
	// Collect's own included.
	Database int `json:"database"`
	// ByState counts them by pg_stat_activity.state ("active", "idle",
	// "idle in transaction", "idle in transaction (aborted)", "fastpath
	// function call", "disabled"), and StateNotVisible for sessions whose
	// state is hidden from the role. Never null.
	ByState map[string]int `json:"by_state"`
	// WaitingOnLocks counts the database's sessions waiting for a lock
	// (wait_event_type 'Lock'), of those the role may see.
	WaitingOnLocks int `json:"waiting_on_locks"`
	// Server is the number of client sessions on the whole server, every
	// database.
	Server int `json:"server"`
	// MaxConnections is the max_connections setting, which bounds Server
	// (less superuser_reserved_connections for ordinary roles).
	MaxConnections int `json:"max_connections"`
}

// Transaction is one session's open transaction, from pg_stat_activity.
type Transaction struct {
	PID             int    `json:"pid"`
	User            string `json:"user"`
	ApplicationName string `json:"application_name"`
	// State is the session's state: "active" while a statement runs, "idle
	// in transaction" between statements.
	State string `json:"state"`
	// StartedAt is xact_start.
	StartedAt time.Time `json:"started_at"`
	// AgeSeconds is the time since StartedAt, at CollectedAt.
	AgeSeconds float64 `json:"age_seconds"`
	// Query is the start of the session's current or last statement, cut at
	// Options.QueryChars characters.
	Query string `json:"query"`
}

// Slot is one replication slot, from pg_replication_slots. Lags are bytes
// of WAL between Stats.WALPosition and the slot's positions
// (pg_wal_lsn_diff); nil when the slot has no such position.
type Slot struct {
	Name string `json:"name"`
	// Type is "physical" or "logical".
	Type string `json:"type"`
	// Plugin is the output plugin of a logical slot (pgoutput).
	Plugin string `json:"plugin,omitempty"`
	// Database is the database of a logical slot.
	Database string `json:"database,omitempty"`
	// Active says whether a walsender is streaming from the slot now.
	Active bool `json:"active"`
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved, lost.
	WALStatus string `json:"wal_status,omitempty"`
	// RetainedBytes is WAL the server keeps for the slot: from restart_lsn.
	RetainedBytes *int64 `json:"retained_bytes"`
	// LagBytes is how far the slot's consumer is behind: from
	// confirmed_flush_lsn for a logical slot, restart_lsn for a physical one.
	LagBytes *int64 `json:"lag_bytes"`
}

// Follower is one walsender, from pg_stat_replication. Positions and lags
// are nil when the role may not see them (another role's walsender without
// Monitor) or the follower has not reported them.
type Follower struct {
	PID             int    `json:"pid"`
	User            string `json:"user"`
	ApplicationName string `json:"application_name"`
	ClientAddr      string `json:"client_addr,omitempty"`
	// Kind is "logical" when the walsender streams a logical slot (a
	// subscription, a shard move), else "physical" (a standby).
	Kind string `json:"kind"`
	// Slot is the replication slot it streams, if any.
	Slot string `json:"slot,omitempty"`
	// State is startup, catchup, streaming, backup or stopping.
	State     string `json:"state,omitempty"`
	SyncState string `json:"sync_state,omitempty"`
	// SentLagBytes is WAL not yet sent: from sent_lsn.
	SentLagBytes *int64 `json:"sent_lag_bytes"`
	// ReplayLagBytes is WAL sent but not yet replayed by the follower: from
	// replay_lsn.
	ReplayLagBytes *int64 `json:"replay_lag_bytes"`
	// ReplayLagSeconds is pg_stat_replication.replay_lag; nil when the
	// follower is caught up and idle, or not visible.
	ReplayLagSeconds *float64 `json:"replay_lag_seconds"`
}

// Disk is the file system of the data directory. PostgreSQL offers no SQL
// function for free disk space, so it is visible only when the role may read
// data_directory (superuser or pg_read_all_settings) and the server runs on
// the machine Collect runs on (a loopback or Unix-socket connection whose
// data directory is there): then it is statfs(2) of that directory.
type Disk struct {
	// Path is the data directory measured.
	Path string `json:"path,omitempty"`
	// FreeBytes is the space available to the server's user; nil when not
	// visible.
	FreeBytes *int64 `json:"free_bytes"`
	// TotalBytes is the file system's size; nil when not visible.
	TotalBytes *int64 `json:"total_bytes"`
	// NotVisible says why FreeBytes is nil; empty when visible.
	NotVisible string `json:"not_visible,omitempty"`
}

// Vacuum is dead tuples in the database's user tables, from
// pg_stat_user_tables (readable by any role, for every table).
type Vacuum struct {
	// DeadTuples is sum(n_dead_tup).
	DeadTuples int64 `json:"dead_tuples"`
	// LiveTuples is sum(n_live_tup).
	LiveTuples int64 `json:"live_tuples"`
	// TablesDue counts tables whose dead tuples exceed their autovacuum
	// threshold (autovacuum should take them at its next round).
	TablesDue int `json:"tables_due"`
	// Tables are the Options.Tables tables with the most dead tuples, most
	// first. Never null.
	Tables []TableVacuum `json:"tables"`
}

// TableVacuum is one table's row of pg_stat_user_tables.
type TableVacuum struct {
	// Table is the schema-qualified name, each part quoted only where
	// needed (quote_ident): shard_0003.invoices, public."Order".
	Table      string `json:"table"`
	DeadTuples int64  `json:"dead_tuples"`
	LiveTuples int64  `json:"live_tuples"`
	// Threshold is the dead tuples past which autovacuum vacuums the table:
	// autovacuum_vacuum_threshold + autovacuum_vacuum_scale_factor ×
	// pg_class.reltuples, with the table's own storage parameters where set.
	Threshold int64 `json:"threshold"`
	// Due says DeadTuples > Threshold.
	Due            bool       `json:"due"`
	LastAutovacuum *time.Time `json:"last_autovacuum"`
	LastVacuum     *time.Time `json:"last_vacuum"`
	// AutovacuumCount is how many times autovacuum vacuumed it.
	AutovacuumCount int64 `json:"autovacuum_count"`
}

// Statements is the pg_stat_statements part.
type Statements struct {
	// Status is empty when Top was read, else why not:
	// "pg_stat_statements not installed" (CREATE EXTENSION in the node's
	// database), or not loaded (it needs shared_preload_libraries and a
	// restart), or the error.
	Status string `json:"status,omitempty"`
	// StatsReset is pg_stat_statements_info.stats_reset: when its counters
	// were last reset.
	StatsReset *time.Time `json:"stats_reset"`
	// Top are the Options.Statements statements of the database with the
	// most total execution time, most first. Every role sees the counters;
	// other roles' query texts read "<insufficient privilege>" without
	// Monitor. Never null.
	Top []Statement `json:"top"`
}

// Statement is one row of pg_stat_statements.
type Statement struct {
	// QueryID is nil where the role may not see it.
	QueryID *int64 `json:"query_id"`
	User    string `json:"user"`
	Calls   int64  `json:"calls"`
	// TotalMS and MeanMS are total_exec_time and mean_exec_time.
	TotalMS float64 `json:"total_ms"`
	MeanMS  float64 `json:"mean_ms"`
	Rows    int64   `json:"rows"`
	// Query is the normalised text, cut at Options.QueryChars characters.
	Query string `json:"query"`
}
