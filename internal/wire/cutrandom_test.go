package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"testing"
	"time"
)

// cutReader serves data in pieces of random length, and between pieces,
// at random, a deadline's timeout (as the router's idle watch ends a
// client's read): no byte is lost or read twice by it.
type cutReader struct {
	data []byte
	rng  *rand.Rand
	cuts int
}

func (c *cutReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, errors.New("end of the test stream")
	}
	if c.rng.Intn(4) == 0 {
		c.cuts++
		return 0, os.ErrDeadlineExceeded
	}
	n := 1 + c.rng.Intn(min(len(p), len(c.data), 1+c.rng.Intn(70000)))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// Messages of every size class the Reader handles differently (in the
// buffer, around its size, in its own pinned buffer, past PinnedMax in a
// buffer of their own, refused for memory and skipped), cut by deadlines
// at random places, headers included: each ReadMessage that is not cut
// returns the next message whole, in order. Seeds are fixed (reproducible).
func TestReadMessageRandomCuts(t *testing.T) {
	sizes := []int{0, 1, 4, 100, 16<<10 - 6, 16<<10 - 5, 16<<10 - 4, 16 << 10, 100 << 10, 1<<20 - 1, 1 << 20, 1<<20 + 7, 3 << 20}
	for _, budget := range []bool{false, true} {
		for seed := int64(1); seed <= 8; seed++ {
			t.Run(fmt.Sprintf("budget=%v/seed=%d", budget, seed), func(t *testing.T) {
				rng := rand.New(rand.NewSource(seed))
				type msg struct {
					typ  byte
					body []byte
				}
				var msgs []msg
				var stream []byte
				for i := 0; i < 40; i++ {
					n := sizes[rng.Intn(len(sizes))]
					body := make([]byte, n)
					rng.Read(body)
					m := msg{byte('A' + rng.Intn(26)), body}
					msgs = append(msgs, m)
					stream = Frame(stream, m.typ, m.body)
				}
				cr := &cutReader{data: stream, rng: rng}
				r := NewReader(cr, 16<<10, 0)
				if budget {
					r.UseBudget(context.Background(), NewBudget(2<<20, time.Second))
				}
				for i, want := range msgs {
					for {
						typ, body, err := r.ReadMessage()
						if errors.Is(err, os.ErrDeadlineExceeded) {
							continue // the idle watch's wake: read on
						}
						var me *MemoryError
						switch {
						case budget && len(want.body) > 2<<20 && errors.As(err, &me) && typ == want.typ:
						case err != nil:
							t.Fatalf("message %d (%q, %d bytes): %v", i, want.typ, len(want.body), err)
						case typ != want.typ || !bytes.Equal(body, want.body):
							t.Fatalf("message %d: got %q, %d bytes; want %q, %d bytes", i, typ, len(body), want.typ, len(want.body))
						}
						break
					}
				}
				if cr.cuts == 0 || len(cr.data) != 0 {
					t.Fatalf("%d cuts, %d bytes unread", cr.cuts, len(cr.data))
				}
			})
		}
	}
}
