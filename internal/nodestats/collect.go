package nodestats

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options bound what Collect returns.
type Options struct {
	// Tables is how many tables Vacuum.Tables lists; 0 means 10.
	Tables int
	// Statements is how many statements Statements.Top lists; 0 means 10.
	Statements int
	// QueryChars cuts query texts to that many characters; 0 means 200.
	QueryChars int
}

func (o Options) withDefaults() Options {
	if o.Tables <= 0 {
		o.Tables = 10
	}
	if o.Statements <= 0 {
		o.Statements = 10
	}
	if o.QueryChars <= 0 {
		o.QueryChars = 200
	}
	return o
}

// Collect reads the health of the node conn is connected to, with the
// default Options. conn should be a connection to the node's database as the
// node DSN's role; Collect runs read-only statements on it, each in a
// transaction of its own, and leaves no setting behind.
func Collect(ctx context.Context, conn *pgx.Conn) (Stats, error) {
	return CollectWith(ctx, conn, Options{})
}

// CollectWith is Collect with options. It fails only when the node does not
// answer or a view every role may read cannot be read; what the role may not
// see is left out and said in Stats.Notes.
func CollectWith(ctx context.Context, conn *pgx.Conn, opts Options) (Stats, error) {
	opts = opts.withDefaults()
	s := Stats{
		Slots:     []Slot{},
		Followers: []Follower{},
		Notes:     []string{},
		Connections: Connections{
			ByState: map[string]int{},
		},
		Vacuum:     Vacuum{Tables: []TableVacuum{}},
		Statements: Statements{Top: []Statement{}},
	}
	steps := []struct {
		name string
		fn   func(context.Context, *pgx.Conn, *Stats, Options) error
	}{
		{"server", readServer},
		{"hit rates", readHitRates},
		{"connections", readConnections},
		{"longest transaction", readLongestTransaction},
		{"replication slots", readSlots},
		{"followers", readFollowers},
		{"vacuum", readVacuum},
		{"pg_stat_statements", readStatements},
		{"disk", readDisk},
	}
	for _, st := range steps {
		if err := st.fn(ctx, conn, &s, opts); err != nil {
			return s, fmt.Errorf("node stats: %s: %w", st.name, err)
		}
	}
	return s, nil
}

func readServer(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	return conn.QueryRow(ctx, `SELECT clock_timestamp(), current_database(), current_user,
		current_setting('server_version'), pg_postmaster_start_time(), pg_is_in_recovery(),
		pg_has_role('pg_read_all_stats', 'USAGE'),
		(SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
		pg_database_size(current_database()),
		(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text`).
		Scan(&s.CollectedAt, &s.Database, &s.User, &s.ServerVersion, &s.StartedAt, &s.InRecovery,
			&s.Monitor, &s.StatsReset, &s.DatabaseBytes, &s.WALPosition)
}

func readHitRates(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	var heapHit, heapRead, idxHit, idxRead, dbHit, dbRead int64
	err := conn.QueryRow(ctx, `SELECT
		(SELECT coalesce(sum(heap_blks_hit), 0)::int8 FROM pg_statio_user_tables),
		(SELECT coalesce(sum(heap_blks_read), 0)::int8 FROM pg_statio_user_tables),
		(SELECT coalesce(sum(idx_blks_hit), 0)::int8 FROM pg_statio_user_indexes),
		(SELECT coalesce(sum(idx_blks_read), 0)::int8 FROM pg_statio_user_indexes),
		(SELECT coalesce(blks_hit, 0) FROM pg_stat_database WHERE datname = current_database()),
		(SELECT coalesce(blks_read, 0) FROM pg_stat_database WHERE datname = current_database())`).
		Scan(&heapHit, &heapRead, &idxHit, &idxRead, &dbHit, &dbRead)
	if err != nil {
		return err
	}
	s.Cache = newHitRate(heapHit, heapRead)
	s.IndexCache = newHitRate(idxHit, idxRead)
	s.DatabaseCache = newHitRate(dbHit, dbRead)
	return nil
}

// clientSession selects client sessions in pg_stat_activity. Without
// pg_read_all_stats, another role's session shows only its database, pid and
// role (backend_type is null too); those are counted, as are other roles'
// parallel workers and walsenders connected to a database, which cannot be
// told apart from them. Background processes have no role or no database.
const clientSession = `(backend_type = 'client backend' OR (backend_type IS NULL AND datname IS NOT NULL AND usesysid IS NOT NULL))`

func readConnections(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	rows, err := conn.Query(ctx, `SELECT coalesce(state, $1), count(*)::int,
			count(*) FILTER (WHERE wait_event_type = 'Lock')::int
		FROM pg_stat_activity
		WHERE `+clientSession+` AND datname = current_database()
		GROUP BY 1`, StateNotVisible)
	if err != nil {
		return err
	}
	var state string
	var n, waiting int
	_, err = pgx.ForEachRow(rows, []any{&state, &n, &waiting}, func() error {
		s.Connections.ByState[state] += n
		s.Connections.Database += n
		s.Connections.WaitingOnLocks += waiting
		return nil
	})
	if err != nil {
		return err
	}
	if err := conn.QueryRow(ctx, `SELECT count(*)::int, current_setting('max_connections')::int
		FROM pg_stat_activity WHERE `+clientSession).
		Scan(&s.Connections.Server, &s.Connections.MaxConnections); err != nil {
		return err
	}
	if hidden := s.Connections.ByState[StateNotVisible]; hidden > 0 {
		s.Notes = append(s.Notes, fmt.Sprintf("%d session(s) of other roles: state, transaction and query not visible (grant pg_monitor to %s)", hidden, s.User))
	}
	return nil
}

func readLongestTransaction(ctx context.Context, conn *pgx.Conn, s *Stats, o Options) error {
	var t Transaction
	err := conn.QueryRow(ctx, `SELECT pid, coalesce(usename, ''), coalesce(application_name, ''), coalesce(state, ''),
			xact_start, extract(epoch FROM clock_timestamp() - xact_start)::float8, left(coalesce(query, ''), $1)
		FROM pg_stat_activity
		WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
		ORDER BY xact_start LIMIT 1`, o.QueryChars).
		Scan(&t.PID, &t.User, &t.ApplicationName, &t.State, &t.StartedAt, &t.AgeSeconds, &t.Query)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	s.LongestTransaction = &t
	return nil
}

// walPos is the expression for the position lags are measured from.
const walPos = `(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)`

func readSlots(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	rows, err := conn.Query(ctx, `SELECT slot_name::text, slot_type, coalesce(plugin::text, ''), coalesce(database::text, ''),
			active, coalesce(wal_status, ''),
			pg_wal_lsn_diff(`+walPos+`, restart_lsn)::int8,
			pg_wal_lsn_diff(`+walPos+`, CASE WHEN slot_type = 'logical' THEN confirmed_flush_lsn ELSE restart_lsn END)::int8
		FROM pg_replication_slots ORDER BY slot_name`)
	if err != nil {
		return err
	}
	s.Slots, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Slot, error) {
		var sl Slot
		err := r.Scan(&sl.Name, &sl.Type, &sl.Plugin, &sl.Database, &sl.Active, &sl.WALStatus, &sl.RetainedBytes, &sl.LagBytes)
		return sl, err
	})
	if s.Slots == nil {
		s.Slots = []Slot{}
	}
	return err
}

func readFollowers(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	rows, err := conn.Query(ctx, `SELECT r.pid, coalesce(r.usename::text, ''), coalesce(r.application_name, ''),
			coalesce(host(r.client_addr), ''), coalesce(sl.slot_type, 'physical'), coalesce(sl.slot_name::text, ''),
			coalesce(r.state, ''), coalesce(r.sync_state, ''),
			pg_wal_lsn_diff(`+walPos+`, r.sent_lsn)::int8,
			pg_wal_lsn_diff(`+walPos+`, r.replay_lsn)::int8,
			extract(epoch FROM r.replay_lag)::float8
		FROM pg_stat_replication r LEFT JOIN pg_replication_slots sl ON sl.active_pid = r.pid
		ORDER BY r.application_name, r.pid`)
	if err != nil {
		return err
	}
	s.Followers, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Follower, error) {
		var f Follower
		err := r.Scan(&f.PID, &f.User, &f.ApplicationName, &f.ClientAddr, &f.Kind, &f.Slot, &f.State, &f.SyncState,
			&f.SentLagBytes, &f.ReplayLagBytes, &f.ReplayLagSeconds)
		return f, err
	})
	if s.Followers == nil {
		s.Followers = []Follower{}
	}
	if err != nil {
		return err
	}
	if !s.Monitor {
		hidden := 0
		for _, f := range s.Followers {
			if f.State == "" {
				hidden++
			}
		}
		if hidden > 0 {
			s.Notes = append(s.Notes, fmt.Sprintf("%d walsender(s) of other roles: state and lag not visible (grant pg_monitor to %s)", hidden, s.User))
		}
	}
	return nil
}

func readVacuum(ctx context.Context, conn *pgx.Conn, s *Stats, o Options) error {
	// The threshold is autovacuum's (relation_needs_vacanalyze): a table's
	// storage parameters win over the settings; reltuples is -1 before the
	// first ANALYZE and then counts as 0.
	const q = `WITH t AS (
		SELECT st.schemaname, st.relname, st.n_dead_tup, st.n_live_tup, st.last_autovacuum, st.last_vacuum, st.autovacuum_count,
			(coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions) WHERE option_name = 'autovacuum_vacuum_threshold')::float8,
					current_setting('autovacuum_vacuum_threshold')::float8)
				+ coalesce((SELECT option_value FROM pg_options_to_table(c.reloptions) WHERE option_name = 'autovacuum_vacuum_scale_factor')::float8,
					current_setting('autovacuum_vacuum_scale_factor')::float8) * greatest(c.reltuples, 0))::int8 AS threshold
		FROM pg_stat_user_tables st JOIN pg_class c ON c.oid = st.relid)
	SELECT quote_ident(schemaname) || '.' || quote_ident(relname), n_dead_tup, n_live_tup, threshold, last_autovacuum, last_vacuum, autovacuum_count,
		sum(n_dead_tup) OVER ()::int8, sum(n_live_tup) OVER ()::int8, (count(*) FILTER (WHERE n_dead_tup > threshold) OVER ())::int
	FROM t ORDER BY n_dead_tup DESC, schemaname, relname`
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var t TableVacuum
		if err := rows.Scan(&t.Table, &t.DeadTuples, &t.LiveTuples, &t.Threshold, &t.LastAutovacuum, &t.LastVacuum,
			&t.AutovacuumCount, &s.Vacuum.DeadTuples, &s.Vacuum.LiveTuples, &s.Vacuum.TablesDue); err != nil {
			return err
		}
		if len(s.Vacuum.Tables) < o.Tables {
			t.Due = t.DeadTuples > t.Threshold
			s.Vacuum.Tables = append(s.Vacuum.Tables, t)
		}
	}
	return rows.Err()
}

// Status texts of Statements.
const (
	StatementsNotInstalled = "pg_stat_statements not installed"
	StatementsNotLoaded    = "pg_stat_statements is installed but not loaded: add it to shared_preload_libraries and restart the server"
)

func readStatements(ctx context.Context, conn *pgx.Conn, s *Stats, o Options) error {
	var schema string
	err := conn.QueryRow(ctx, `SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
		WHERE e.extname = 'pg_stat_statements'`).Scan(&schema)
	if errors.Is(err, pgx.ErrNoRows) {
		s.Statements.Status = StatementsNotInstalled
		return nil
	}
	if err != nil {
		return err
	}
	view := pgx.Identifier{schema, "pg_stat_statements"}.Sanitize()
	rows, err := conn.Query(ctx, `SELECT queryid, coalesce(pg_get_userbyid(userid)::text, ''), calls, total_exec_time, mean_exec_time, rows,
			left(coalesce(query, ''), $1)
		FROM `+view+` WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY total_exec_time DESC, queryid LIMIT $2`, o.QueryChars, o.Statements)
	if err == nil {
		s.Statements.Top, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Statement, error) {
			var st Statement
			err := r.Scan(&st.QueryID, &st.User, &st.Calls, &st.TotalMS, &st.MeanMS, &st.Rows, &st.Query)
			return st, err
		})
		if s.Statements.Top == nil {
			s.Statements.Top = []Statement{}
		}
	}
	if err != nil {
		// A library not preloaded (55000) or a view the role may not
		// read is said, not fatal: the other numbers stand.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return err
		}
		if pgErr.Code == "55000" {
			s.Statements.Status = StatementsNotLoaded
		} else {
			s.Statements.Status = fmt.Sprintf("pg_stat_statements: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
		}
		return nil
	}
	info := pgx.Identifier{schema, "pg_stat_statements_info"}.Sanitize()
	// pg_stat_statements_info exists from version 1.9 (PostgreSQL 14).
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, info).Scan(&exists); err != nil {
		return err
	}
	if exists {
		if err := conn.QueryRow(ctx, `SELECT stats_reset FROM `+info).Scan(&s.Statements.StatsReset); err != nil {
			return err
		}
	}
	return nil
}

func readDisk(ctx context.Context, conn *pgx.Conn, s *Stats, _ Options) error {
	var dir *string
	if err := conn.QueryRow(ctx, `SELECT CASE WHEN pg_has_role('pg_read_all_settings', 'USAGE')
		THEN current_setting('data_directory') END`).Scan(&dir); err != nil {
		return err
	}
	if dir == nil {
		s.Disk.NotVisible = "not visible: reading data_directory needs superuser or pg_read_all_settings, and Postgres has no SQL function for free space"
		return nil
	}
	s.Disk.Path = *dir
	if !local(conn.PgConn().Conn().RemoteAddr()) {
		s.Disk.NotVisible = "not visible: the server is on another host (Postgres has no SQL function for free space)"
		return nil
	}
	free, total, err := diskSpace(*dir, s.ServerVersion)
	if err != nil {
		s.Disk.NotVisible = "not visible: " + err.Error()
		return nil
	}
	s.Disk.FreeBytes, s.Disk.TotalBytes = &free, &total
	return nil
}

// local reports whether a connection's peer is on this machine.
func local(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return true
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	}
	return false
}
