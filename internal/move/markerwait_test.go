package move

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestMarkerApplierWakesFence: the stream's applier notes the move's
// markers once the target applied them (and not those of another move, nor
// a batch that failed), and the fence's wait for its marker returns on that
// alone, without finding the row on the target (it would have polled the
// target every hour here).
func TestMarkerApplierWakesFence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := newEnv(t)
	dst, err := pgx.Connect(ctx, e.dstDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(context.Background())
	if err := ensureMarker(ctx, dst); err != nil {
		t.Fatal(err)
	}
	rel := &stream.Relation{Schema: markerSchema, Table: "marker", Columns: []stream.Column{{Name: "move_id"}, {Name: "seq"}, {Name: "at"}}}
	marker := func(move, seq string) *stream.Txn {
		return &stream.Txn{Changes: []stream.Change{{Kind: stream.Insert, Rel: rel,
			New: stream.Tuple{{Data: []byte(move)}, {Data: []byte(seq)}, {Data: []byte("2026-12-07 10:00:00+00")}}}}}
	}
	failing := errors.New("target gone")
	var fail bool
	a := &markerApplier{moveID: 7, wake: make(chan struct{}, 1), inner: stream.ApplierFunc(func(context.Context, []*stream.Txn) error {
		if fail {
			return failing
		}
		return nil
	})}
	mv := &moveRun{Info: Info{ID: 7}, stream: &liveStream{done: make(chan struct{}), markers: a}}

	if err := a.Apply(ctx, []*stream.Txn{marker("8", "5"), marker("7", "2")}); err != nil {
		t.Fatal(err)
	}
	fail = true
	if err := a.Apply(ctx, []*stream.Txn{marker("7", "3")}); !errors.Is(err, failing) {
		t.Fatalf("Apply of a failing batch: %v", err)
	}
	if !a.applied(2) || a.applied(3) {
		t.Fatalf("applied(2) = %v, applied(3) = %v; want true, false (seq 3 failed, seq 5 is another move's)", a.applied(2), a.applied(3))
	}
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancelShort()
	if err := waitMarker(short, dst, mv, 3, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for marker 3, neither applied nor on the target: %v", err)
	}
	fail = false
	waited := make(chan error, 1)
	go func() { waited <- waitMarker(ctx, dst, mv, 3, time.Hour) }()
	if err := a.Apply(ctx, []*stream.Txn{marker("7", "3")}); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("wait for marker 3 once applied: %v", err)
	}
}
