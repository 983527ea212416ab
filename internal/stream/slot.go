package stream

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// validSlotName is what PostgreSQL accepts as a replication slot name.
var validSlotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// Connect opens a replication connection (replication=database) to the
// database of dsn. The role needs the REPLICATION attribute (or, on Amazon
// RDS, the rds_replication role) and pg_hba.conf must allow it.
func Connect(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse source dsn: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// Slot is a logical replication slot just created, with the snapshot it exported.
type Slot struct {
	// Name is the slot's name.
	Name string
	// ConsistentLSN is where the slot's stream starts: the exported snapshot
	// sees every transaction that commits before it and none after.
	ConsistentLSN LSN
	// Snapshot is the exported snapshot's name, for SET TRANSACTION SNAPSHOT
	// in a REPEATABLE READ transaction on the same database. It is valid
	// until Close.
	Snapshot string

	conn *pgconn.PgConn
}

// CreateSlot creates the logical slot name (output plugin pgoutput) on the
// database of dsn and exports a snapshot consistent with its start. The
// snapshot lives as long as the returned Slot's connection: import it into
// the copying transactions, then Close the Slot. Creating a slot waits for
// every transaction open on the source server (all databases) to end.
func CreateSlot(ctx context.Context, dsn, name string) (*Slot, error) {
	if !validSlotName.MatchString(name) {
		return nil, fmt.Errorf("create replication slot: invalid name %q (lower-case letters, digits and _ only)", name)
	}
	conn, err := Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	rr := conn.Exec(ctx, fmt.Sprintf(`CREATE_REPLICATION_SLOT %s LOGICAL pgoutput (SNAPSHOT 'export')`, name))
	results, err := rr.ReadAll()
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 || len(results[0].Rows[0]) < 3 {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create replication slot %s: unexpected reply", name)
	}
	row := results[0].Rows[0]
	lsn, err := ParseLSN(string(row[1]))
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create replication slot %s: consistent point: %w", name, err)
	}
	return &Slot{Name: name, ConsistentLSN: lsn, Snapshot: string(row[2]), conn: conn}, nil
}

// Close ends the slot's replication connection and with it the exported
// snapshot. The slot itself stays (see DropSlot).
func (s *Slot) Close(ctx context.Context) error {
	if s.conn == nil {
		return nil
	}
	err := s.conn.Close(ctx)
	s.conn = nil
	return err
}

// Querier is what the helpers of this package need of a connection: *pgx.Conn, pgx.Tx and *pgxpool.Pool have it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// DropSlot drops the replication slot name on the server of conn (an
// ordinary connection), ending the WAL sender still streaming from it
// (the role may end its own sessions). A missing slot is not an error.
func DropSlot(ctx context.Context, conn Querier, name string) error {
	for attempt := 0; ; attempt++ {
		var pid *int32
		err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, name).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("drop replication slot %s: %w", name, err)
		}
		if pid != nil {
			_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, *pid)
		} else {
			_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, name)
			if err == nil {
				return nil
			}
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "55006" { // object_in_use: a sender attached meanwhile
				return fmt.Errorf("drop replication slot %s: %w", name, err)
			}
		}
		if attempt >= 100 {
			return fmt.Errorf("drop replication slot %s: still in use after 10s", name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop replication slot %s: %w", name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
