package wire

import (
	"context"
	"fmt"
	"runtime"
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
	// kept counts shares handed to owners with KeepWith; lastGC is when
	// acquire last ran the GC to free those of owners gone (UnixNano).
	kept   atomic.Int64
	lastGC atomic.Int64
	// garbage counts bytes of bodies dropped since the last collection
	// started; gcRunning is set while one runs.
	garbage   atomic.Int64
	gcRunning atomic.Bool
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
	if b.kept.Load() > 0 {
		// Shares kept by owners that are garbage return only when the
		// GC finds them: run it, at most every 100 ms.
		last := b.lastGC.Load()
		if start.UnixNano()-last > int64(100*time.Millisecond) && b.lastGC.CompareAndSwap(last, start.UnixNano()) {
			runtime.GC()
			if b.sem.TryAcquire(n) {
				b.inUse.Add(n)
				return nil
			}
		}
	}
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

// dropped returns n bytes whose buffer the Reader let go of (garbage, as
// far as the Reader knows). The Go runtime collects when the heap has grown
// by as much as was live after the last collection, so bodies that come and
// go could take twice the budget; collecting each time a quarter of the
// budget has been dropped keeps the heap within 1.25 times it.
func (b *Budget) dropped(n int64) {
	b.release(n)
	if b.garbage.Add(n) < b.total/4 {
		return
	}
	if b.gcRunning.CompareAndSwap(false, true) {
		b.garbage.Store(0)
		go func() {
			runtime.GC()
			b.gcRunning.Store(false)
		}()
	}
}

// KeepWith hands the memory r holds for the last body over to owner, an
// object that keeps (part of) that body beyond the next read, such as a
// prepared statement's text: the bytes stay counted in the Budget until
// owner is garbage. It does nothing when r holds no memory.
func KeepWith[T any](r *Reader, owner *T) {
	if r.held == 0 {
		return
	}
	b, n := r.budget, r.held
	r.held = 0
	b.kept.Add(1)
	runtime.AddCleanup(owner, func(n int64) {
		b.kept.Add(-1)
		b.release(n)
	}, n)
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
