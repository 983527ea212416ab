package importer

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
)

// slot is a logical replication slot on the legacy database just created,
// with the snapshot it exported: valid while its connection is open and
// idle. (internal/stream's CreateSlot does the same; this stays small so
// that it can switch to it.)
type slot struct {
	Name          string
	ConsistentLSN string
	Snapshot      string
	conn          *pgconn.PgConn
}

// createSlot creates the pgoutput slot name on the database of dsn, a
// temporary one (dropped when its connection ends) when temporary.
func createSlot(ctx context.Context, dsn, name string, temporary bool) (*slot, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse the legacy connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open a replication connection to the legacy database: %w", err)
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, name, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Temporary: temporary, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication})
	if err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("create replication slot %s: %w", name, err)
	}
	return &slot{Name: name, ConsistentLSN: res.ConsistentPoint, Snapshot: res.SnapshotName, conn: conn}, nil
}

// Close ends the slot's connection and its snapshot (and a temporary slot).
func (s *slot) Close(ctx context.Context) error {
	if s == nil || s.conn == nil {
		return nil
	}
	err := s.conn.Close(ctx)
	s.conn = nil
	return err
}

// isDuplicate reports a 42710 (duplicate_object), e.g. a slot that exists.
func isDuplicate(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "42710"
}
