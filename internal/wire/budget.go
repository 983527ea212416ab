package wire

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"
)

// Budget bounds the memory that Readers sharing it hold for large message
// bodies: a body larger than PinnedMax is read into a buffer of its own only
// once its size has been taken from the budget, and the bytes return to the
// budget when the Reader moves on to its next message (or Release is
// called). A Reader waits up to the budget's wait for its share; then it
// discards the body and returns a *MemoryError. Smaller bodies use the
// Reader's own buffers and are not counted.
//
// A Budget is safe for concurrent use.
type Budget struct {
	sem   *semaphore.Weighted
	total int64
	wait  time.Duration
	inUse atomic.Int64
}

// NewBudget returns a budget of total bytes whose Readers wait up to wait
// for their share (zero means 10 seconds).
func NewBudget(total int64, wait time.Duration) *Budget {
	if wait <= 0 {
		wait = 10 * time.Second
	}
	return &Budget{sem: semaphore.NewWeighted(total), total: total, wait: wait}
}

// Total is the budget's size in bytes.
func (b *Budget) Total() int64 { return b.total }

// InUse is how many bytes of the budget Readers hold now.
func (b *Budget) InUse() int64 { return b.inUse.Load() }

// acquire takes n bytes, waiting up to the budget's wait or until ctx ends.
func (b *Budget) acquire(ctx context.Context, n int64) error {
	if n > b.total {
		return &MemoryError{Size: int(n), Total: b.total}
	}
	if b.sem.TryAcquire(n) {
		b.inUse.Add(n)
		return nil
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, b.wait)
	defer cancel()
	if err := b.sem.Acquire(wctx, n); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("wait for message memory: %w", ctx.Err())
		}
		return &MemoryError{Size: int(n), Total: b.total, Waited: time.Since(start).Round(time.Millisecond)}
	}
	b.inUse.Add(n)
	return nil
}

func (b *Budget) release(n int64) {
	b.inUse.Add(-n)
	b.sem.Release(n)
}

// MemoryError reports a message body that could not get its share of the
// Budget in time (or is larger than the whole budget). The body was read
// and discarded: the connection is still in step.
type MemoryError struct {
	// Size is the body's size and Total the budget's, in bytes.
	Size  int
	Total int64
	// Waited is how long the reader waited (zero: the body can never fit).
	Waited time.Duration
}

func (e *MemoryError) Error() string {
	if e.Waited == 0 {
		return fmt.Sprintf("message of %d bytes is larger than the memory budget for messages (%d bytes)", e.Size, e.Total)
	}
	return fmt.Sprintf("message of %d bytes waited %s for memory: the budget for messages in flight (%d bytes) is in use", e.Size, e.Waited, e.Total)
}
