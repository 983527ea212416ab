package usage

import (
	"math/rand/v2"
	"time"
)

// SuggestedSampleBelow is a threshold for a busy router: transactions
// without an error that held their backend less than this are counted by
// sampling (SampleWeight). Counting is exact unless a threshold is set: with
// little traffic (a dev cluster, a quiet tenant) sampled counts are far from
// the true ones.
const SuggestedSampleBelow = 5 * time.Millisecond

// minSampleHeld bounds the weight of the shortest transactions
// (below/minSampleHeld: 5,000 at the default).
const minSampleHeld = time.Microsecond

// SampleWeight decides whether a transaction that held its backend for held
// is counted, and for how many it stands: 0 (not counted) or k >= 1, by
// which its counts are to be multiplied before Observe. A transaction with
// an error (exact), one that held its backend below or longer, and every
// one when below <= 0, is counted as itself (1). A shorter one is counted
// with probability 1/k, k = below/held rounded down, and then stands for k
// transactions: every counter's expected sum over the transactions is its
// true sum (Horvitz–Thompson: each transaction's inclusion probability is
// known from its own backend time), and its backend time, held·k ≈ below,
// varies by less than held per counted transaction. So the busiest tenants
// by time are counted about exactly while the per-transaction cost of the
// sketch (its lock and a map lookup by tenant name) is paid by about one in
// k short transactions. Errors are always exact.
func SampleWeight(held, below time.Duration, exact bool) int64 {
	if exact || below <= 0 || held >= below {
		return 1
	}
	k := int64(below / max(held, minSampleHeld))
	if k <= 1 {
		return 1
	}
	if rand.Int64N(k) != 0 {
		return 0
	}
	return k
}

// Scale returns c with every counter multiplied by k (a sample's weight).
func (c Counts) Scale(k int64) Counts {
	if k == 1 {
		return c
	}
	return Counts{Transactions: c.Transactions * k, Statements: c.Statements * k, Errors: c.Errors * k,
		BackendSeconds: c.BackendSeconds * float64(k), Bytes: c.Bytes * k}
}
