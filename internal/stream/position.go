package stream

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PositionDDL creates the table in which appliers record, per stream name,
// the end LSN of the last source transaction they applied.
const PositionDDL = `CREATE SCHEMA IF NOT EXISTS pgtenant_stream;
CREATE TABLE IF NOT EXISTS pgtenant_stream.position (
  name text PRIMARY KEY,
  lsn pg_lsn NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
)`

// EnsurePositionTable creates pgtenant_stream.position on the target if it is missing.
//
// Two processes creating it at once (moves to one target in parallel) can
// collide in CREATE ... IF NOT EXISTS, which is not safe against concurrent
// creation (23505 on the catalog's unique index): the loser tries again and
// then finds it.
func EnsurePositionTable(ctx context.Context, conn Querier) error {
	var err error
	for range 3 {
		if _, err = conn.Exec(ctx, PositionDDL); err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
			break
		}
	}
	return fmt.Errorf("create stream position table: %w", err)
}

// SavePosition records lsn as the applied position of the stream name. Call
// it in the transaction that applies the changes up to lsn.
func SavePosition(ctx context.Context, tx Querier, name string, lsn LSN) error {
	_, err := tx.Exec(ctx, `INSERT INTO pgtenant_stream.position (name, lsn) VALUES ($1, $2::text::pg_lsn)
		ON CONFLICT (name) DO UPDATE SET lsn = excluded.lsn, updated_at = now()`, name, lsn.String())
	if err != nil {
		return fmt.Errorf("save stream position: %w", err)
	}
	return nil
}

// LoadPosition returns the applied position of the stream name, and false
// when none is recorded (or the table does not exist).
func LoadPosition(ctx context.Context, conn Querier, name string) (LSN, bool, error) {
	var s string
	err := conn.QueryRow(ctx, `SELECT lsn::text FROM pgtenant_stream.position WHERE name = $1`, name).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) || isUndefinedTable(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("load stream position: %w", err)
	}
	lsn, err := ParseLSN(s)
	if err != nil {
		return 0, false, fmt.Errorf("load stream position: %w", err)
	}
	return lsn, true, nil
}

// DeletePosition forgets the position of the stream name.
func DeletePosition(ctx context.Context, conn Querier, name string) error {
	_, err := conn.Exec(ctx, `DELETE FROM pgtenant_stream.position WHERE name = $1`, name)
	if err != nil && !isUndefinedTable(err) {
		return fmt.Errorf("delete stream position: %w", err)
	}
	return nil
}
