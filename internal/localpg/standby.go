package localpg

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// InitStandby makes c a physical standby of primary: pg_basebackup -R
// (streaming the WAL, writing standby.signal and primary_conninfo) into c's
// data directory, as the postgres OS user when root, then c's port in
// postgresql.conf. c must not be initialised; c.Port zero means a free port.
// The primary must allow replication connections from 127.0.0.1 for the
// user postgres (initdb's default pg_hba.conf with --auth=trust does). Start
// the standby with Start.
func (c *Cluster) InitStandby(ctx context.Context, primary *Cluster) error {
	if err := c.resolveBin(); err != nil {
		return err
	}
	if c.Initialized() {
		return fmt.Errorf("make standby in %s: the data directory exists already", c.DataDir())
	}
	if err := c.clearPartial(); err != nil {
		return err
	}
	if err := c.makeDataDir(); err != nil {
		return err
	}
	// Into initDir, renamed into place when complete, as Init does.
	if out, err := c.run(ctx, "pg_basebackup", "-D", c.initDir(), "-h", "127.0.0.1", "-p", strconv.Itoa(primary.Port),
		"-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return fmt.Errorf("pg_basebackup from port %d: %w: %s", primary.Port, err, out)
	}
	// The copied server log is the primary's; the standby writes its own.
	_ = os.Remove(filepath.Join(c.initDir(), filepath.Base(c.LogFile())))
	f, err := os.OpenFile(filepath.Join(c.initDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open postgresql.conf: %w", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "\n# standby written by pgtenant\nport = %d\n", c.Port); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write postgresql.conf: %w", err)
	}
	if err := os.Rename(c.initDir(), c.DataDir()); err != nil {
		return fmt.Errorf("move the standby's data directory into place: %w", err)
	}
	return nil
}
