package importer

import (
	"context"
	"testing"
	"time"
)

// TestFollowEndsCleanlyAtFinish: import finish drops the slot a running
// `import start` reads (its WAL sender is terminated, 57P01); the follower
// then ends without an error, as the trigger method's does, instead of
// exiting 1 after a successful import.
func TestFollowEndsCleanlyAtFinish(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newCatalog(t, 4, 2)
	legacy, _ := newLegacy(t, srvA, c, 8, 2)
	im := New(c, nil)
	initImport(ctx, t, c, im, legacy)
	if _, err := im.Start(ctx, StartOptions{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- im.Follow(ctx) }()
	waitSlotActive(t, ctx, im)
	if _, err := im.Cutover(ctx, CutoverOptions{All: true, NoRollback: true}); err != nil {
		t.Fatal(err)
	}
	if err := im.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	waitFollowEnd(t, done)
}

// waitFollowEnd waits for a follower (its Follow's result on done) to end
// without an error once import finish has run.
func waitFollowEnd(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow after finish: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the follower did not stop after import finish")
	}
}
