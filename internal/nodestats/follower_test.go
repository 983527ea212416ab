package nodestats

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// follower is a physical replication client that streams from a slot and
// reports a fixed position as written, flushed and replayed: to the server
// it is a standby stuck at that position.
type follower struct {
	conn *pgconn.PgConn
	pid  int
	done chan struct{}
}

// startFollower starts streaming slot from lsn on a replication connection
// and reports lsn as replayed.
func startFollower(t *testing.T, dsn, slot, lsn string) *follower {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = "fake-standby"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	f := &follower{conn: conn, pid: int(conn.PID()), done: make(chan struct{})}
	var hi, lo uint32
	if _, err := fmt.Sscanf(lsn, "%X/%X", &hi, &lo); err != nil {
		t.Fatalf("lsn %q: %v", lsn, err)
	}
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION SLOT %s PHYSICAL %s", slot, lsn)})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("START_REPLICATION: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("START_REPLICATION: %s (%s)", e.Message, e.Code)
		}
		if _, ok := msg.(*pgproto3.CopyBothResponse); ok {
			break
		}
	}
	// Standby status update: 'r', write, flush, apply, clock, reply.
	pos := uint64(hi)<<32 | uint64(lo)
	b := []byte{'r'}
	for i := 0; i < 3; i++ {
		b = binary.BigEndian.AppendUint64(b, pos)
	}
	b = binary.BigEndian.AppendUint64(b, uint64(time.Since(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).Microseconds()))
	b = append(b, 0)
	fe.Send(&pgproto3.CopyData{Data: b})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	go func() { // read and drop what the server streams, until closed
		defer close(f.done)
		for {
			if _, err := fe.Receive(); err != nil {
				return
			}
		}
	}()
	// Wait until the server has taken the report.
	admin, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for {
		res := admin.ExecParams(ctx, `SELECT 1 FROM pg_stat_replication WHERE pid = $1 AND replay_lsn = $2::pg_lsn`,
			[][]byte{[]byte(fmt.Sprint(f.pid)), []byte(lsn)}, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatal(res.Err)
		}
		if len(res.Rows) == 1 {
			return f
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the server never saw the follower's replay position %s", lsn)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (f *follower) close() {
	f.conn.Conn().Close()
	<-f.done
}
