package importer

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrIDCollision: a row the shard's node took since the cutover has the key
// of a row the legacy database holds (see the comment at the top of
// idblocks.go for how ids are kept apart, and when they are not).
var ErrIDCollision = coded("23505", "a row written on the shard's node since the cutover has the key of a row the legacy database holds")

// IDCollisionError is a write back of a rollback refused by a unique
// constraint of the legacy database (23505). The write back's transaction
// was rolled back: the legacy database holds the rows written back before
// it (with the reverse stream's position), the shard is still served by its
// node, nothing was lost or skipped.
type IDCollisionError struct {
	Shard int
	// Err is the legacy database's error: its Detail names the key,
	// its TableName the table.
	Err *pgconn.PgError
}

func (e *IDCollisionError) Error() string {
	return fmt.Sprintf("%v: %s.%s: %s; nothing was lost: shard %d stays served by its node and the rows written back so far stay on the legacy database\n"+
		"  hint: %s", ErrIDCollision, e.Err.SchemaName, e.Err.TableName, e.Err.Detail, e.Shard, e.Hint())
}

// Hint says what to do.
func (e *IDCollisionError) Hint() string {
	return "the shard keeps running on its node: leave it there, or change the key of the legacy row named above " +
		"(where the app allows it) and run import rollback again: it resumes where it stopped"
}

// SQLState is 23505 (unique_violation).
func (e *IDCollisionError) SQLState() string { return "23505" }

// Unwrap gives ErrIDCollision and the legacy database's error.
func (e *IDCollisionError) Unwrap() []error { return []error{ErrIDCollision, e.Err} }

// idCollision returns err as an IDCollisionError when it is a 23505.
func idCollision(shard int, err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23505" {
		return &IDCollisionError{Shard: shard, Err: pe}
	}
	return err
}
