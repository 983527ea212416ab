package main

import (
	"context"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestImportKilledApplyOnce (issue 12): an `import start` that hangs
// (SIGSTOP: a frozen VM, a network gone) while its apply transaction on a
// node waits for a lock (a real lock, held by another session of the node)
// leaves a server session holding the whole batch, COMMIT included, that
// commits once the lock goes. (A SIGKILL on this machine makes the server
// end the session at once.) The operator ends its WAL sender and starts
// import start again while the lock is still held, then the lock is
// released: the row is on its shard exactly once (the shard's table has no
// primary key here, so a second apply would show) and the stream goes on.
func TestImportKilledApplyOnce(t *testing.T) {
	ctx := context.Background()
	bin := buildBinary(t)
	f := newImportFixture(t, 4, 1, 8)
	tenant := f.ids[0]
	schema, node := f.shardOf(t, tenant)
	buildings := pgx.Identifier{schema, "buildings"}.Sanitize()
	execSQL(t, node, `ALTER TABLE `+buildings+` DROP CONSTRAINT buildings_pkey CASCADE`)

	imp := startImportProc(t, bin)
	lock, err := pgx.Connect(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(ctx)
	if _, err := lock.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `LOCK TABLE `+buildings+` IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'orphan', 'Lock', 1)`, tenant)
	waiting := `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`
	waitInt(t, 1, node, waiting)
	if err := imp.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	execSQL(t, f.legacy, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = current_database() AND active_pid IS NOT NULL`)
	hung := imp

	imp = startImportProc(t, bin)
	defer imp.kill()
	defer hung.kill()
	t.Logf("sessions waiting for the lock before its release: %d", queryInt(t, node, waiting))
	if _, err := lock.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'after', 'Lock', 1)`, tenant)
	waitInt(t, 1, node, `SELECT count(*) FROM `+buildings+` WHERE name = 'after'`)
	if n := queryInt(t, node, `SELECT count(*) FROM `+buildings+` WHERE name = 'orphan'`); n != 1 {
		t.Fatalf("the row written while the stream was killed is on its shard %d times, want once\n%s", n, imp.errOut.String())
	}
}
