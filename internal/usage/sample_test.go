package usage

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// TestSampleWeightExact: errors, transactions at or over the threshold, and
// every transaction with sampling off count as themselves.
func TestSampleWeightExact(t *testing.T) {
	for _, c := range []struct {
		name        string
		held, below time.Duration
		exact       bool
	}{
		{"error", 10 * time.Microsecond, time.Millisecond, true},
		{"at the threshold", time.Millisecond, time.Millisecond, false},
		{"over it", 5 * time.Millisecond, time.Millisecond, false},
		{"sampling off", 10 * time.Microsecond, -1, false},
		{"zero threshold", 10 * time.Microsecond, 0, false},
		{"just under (k = 1)", 600 * time.Microsecond, time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < 1000; i++ {
				if got := SampleWeight(c.held, c.below, c.exact); got != 1 {
					t.Fatalf("SampleWeight(%v, %v, %v) = %d, want 1", c.held, c.below, c.exact, got)
				}
			}
		})
	}
}

// TestSampleWeightUnbiased: over many short transactions of random backend
// times, the sampled counts (transactions, statements, backend time) sum
// to the true sums within a bound many standard deviations wide (the
// variance is known: a transaction of weight k counted with probability
// 1/k adds (k-1)·x² for a counter x), and far fewer transactions are
// observed than happened.
func TestSampleWeightUnbiased(t *testing.T) {
	const n = 200000
	below := 5 * time.Millisecond
	r := rand.New(rand.NewPCG(1, 2))
	var want, got Counts
	var varTxn, varStmt, varSec, wantObserved, varObserved float64
	observed := 0
	for i := 0; i < n; i++ {
		held := time.Duration(5+r.IntN(6000)) * time.Microsecond // some over the threshold
		stmts := int64(1 + r.IntN(4))
		c := Counts{Transactions: 1, Statements: stmts, BackendSeconds: held.Seconds(), Bytes: 100 * stmts}
		want.Add(c)
		k := int64(1)
		if held < below {
			k = int64(below / max(held, minSampleHeld))
		}
		varTxn += float64(k - 1)
		wantObserved += 1 / float64(k)
		varObserved += (1 / float64(k)) * (1 - 1/float64(k))
		varStmt += float64(k-1) * float64(stmts*stmts)
		varSec += float64(k-1) * held.Seconds() * held.Seconds()
		w := SampleWeight(held, below, false)
		if w == 0 {
			continue
		}
		if w != k {
			t.Fatalf("held %v: weight %d, want %d", held, w, k)
		}
		observed++
		got.Add(c.Scale(w))
	}
	check := func(name string, got, want, variance float64) {
		if sd := math.Sqrt(variance); math.Abs(got-want) > 8*sd {
			t.Errorf("%s: sampled sum %.4g, true %.4g: %.1f standard deviations (%.3g) off", name, got, want, math.Abs(got-want)/sd, sd)
		}
	}
	check("transactions", float64(got.Transactions), float64(want.Transactions), varTxn)
	check("statements", float64(got.Statements), float64(want.Statements), varStmt)
	check("backend seconds", got.BackendSeconds, want.BackendSeconds, varSec)
	if got.Bytes != 100*got.Statements {
		t.Errorf("bytes %d, statements %d: scaled apart", got.Bytes, got.Statements)
	}
	// One in k of each weight's transactions is observed.
	check("transactions observed", float64(observed), wantObserved, varObserved)
	if observed > n*3/4 {
		t.Errorf("%d of %d transactions observed: sampling did not thin them", observed, n)
	}
	t.Logf("%d of %d observed; transactions %d (true %d), backend seconds %.3f (true %.3f)", observed, n, got.Transactions, want.Transactions, got.BackendSeconds, want.BackendSeconds)
}

// BenchmarkRelease is what the router does per transaction at release, for
// 1,000 tenants in turn with backend times of 50 µs to 2 ms: every
// transaction observed (exact) or sampled below SuggestedSampleBelow.
//
//	go test ./internal/usage -run '^$' -bench Release -benchmem
func BenchmarkRelease(b *testing.B) {
	tenants := make([]string, 1000)
	for i := range tenants {
		tenants[i] = fmt.Sprint(i)
	}
	r := rand.New(rand.NewPCG(3, 4))
	held := make([]time.Duration, 4096)
	for i := range held {
		held[i] = time.Duration(50+r.IntN(1950)) * time.Microsecond
	}
	for _, c := range []struct {
		name  string
		below time.Duration
	}{{"exact", -1}, {"sampled", SuggestedSampleBelow}} {
		b.Run(c.name, func(b *testing.B) {
			s := New(1000)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				h := held[i%len(held)]
				if k := SampleWeight(h, c.below, false); k > 0 {
					s.Observe(tenants[(i*7919)%len(tenants)], Counts{Transactions: 1, Statements: 1, BackendSeconds: h.Seconds(), Bytes: 64}.Scale(k))
				}
				i++
			}
		})
	}
}
