package nodestats

import (
	"context"
	"fmt"
	"os"
	osexec "os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// startStandby makes a streaming standby of srv with pg_basebackup (a
// physical slot of the given name) and starts it; it is stopped and removed
// when t ends.
func startStandby(t *testing.T, slot string) *localpg.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin, err := localpg.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgtenant-test-standby-")
	if err != nil {
		t.Fatal(err)
	}
	// pgtest reaps directories with an owner whose process is gone.
	os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
	os.Chmod(dir, 0o755)
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c := localpg.New(dir, port)
	c.BinDir = bin
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Error(err)
		}
		os.RemoveAll(dir)
	})
	if err := os.Mkdir(c.DataDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := osexec.CommandContext(ctx, filepath.Join(bin, "pg_basebackup"), "-h", "127.0.0.1", "-p", strconv.Itoa(srv.Cluster.Port),
		"-U", "postgres", "-D", c.DataDir(), "-R", "-X", "stream", "-c", "fast", "-C", "-S", slot)
	cmd.Dir = "/"
	if os.Geteuid() == 0 { // the server runs as postgres, which must own its files
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(c.DataDir(), uid, gid); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg_basebackup: %v\n%s", err, out)
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir(), "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "port = %d\ncluster_name = 'standby1'\n", port)
	f.Close()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// A real standby: the primary lists it as a physical follower on its slot
// with replay lag in bytes; Collect on the standby itself works (in
// recovery, lags measured from the replay position).
func TestStandby(t *testing.T) {
	dsn := srv.NewDatabase(t)
	admin := connect(t, dsn)
	const slot = "ns_standby"
	exec(t, admin, `CREATE ROLE monitor_user3 LOGIN IN ROLE pg_monitor`)
	t.Cleanup(func() {
		c := connect(t, srv.Cluster.DSN("postgres"))
		c.Exec(context.Background(), `SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, slot)
		c.Exec(context.Background(), `DROP ROLE monitor_user3`)
	})
	standby := startStandby(t, slot)
	exec(t, admin, `CREATE TABLE t (id int)`, `INSERT INTO t SELECT generate_series(1, 1000)`)

	// Wait until the standby has replayed the insert.
	var target string
	if err := admin.QueryRow(context.Background(), `SELECT pg_current_wal_lsn()::text`).Scan(&target); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var caught bool
		if err := admin.QueryRow(context.Background(), `SELECT coalesce(bool_or(replay_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'standby1'`, target).Scan(&caught); err != nil {
			t.Fatal(err)
		}
		if caught {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby did not catch up in a minute")
		}
		time.Sleep(50 * time.Millisecond)
	}

	s := collect(t, connect(t, asRole(t, dsn, "monitor_user3")))
	var f *Follower
	for i := range s.Followers {
		if s.Followers[i].ApplicationName == "standby1" {
			f = &s.Followers[i]
		}
	}
	if f == nil || f.Kind != "physical" || f.Slot != slot || f.State != "streaming" || f.ReplayLagBytes == nil || *f.ReplayLagBytes < 0 {
		t.Fatalf("followers %+v", s.Followers)
	}
	var sl *Slot
	for i := range s.Slots {
		if s.Slots[i].Name == slot {
			sl = &s.Slots[i]
		}
	}
	if sl == nil || sl.Type != "physical" || !sl.Active || sl.LagBytes == nil {
		t.Errorf("slot %+v", sl)
	}
	if s.InRecovery {
		t.Error("the primary says it is in recovery")
	}

	// On the standby, as a role without pg_monitor.
	u := strings.Replace(asRole(t, dsn, healthRole), fmt.Sprintf(":%d/", srv.Cluster.Port), fmt.Sprintf(":%d/", standby.Port), 1)
	st := collect(t, connect(t, u))
	if !st.InRecovery || st.WALPosition == "" || st.Database != s.Database || len(st.Followers) != 0 {
		t.Errorf("on the standby: in recovery %v, WAL position %q, database %q, followers %+v", st.InRecovery, st.WALPosition, st.Database, st.Followers)
	}
}
