package placement

import "sort"

// Planned is one shard to move.
type Planned struct {
	Shard int
	From  string
	To    string
}

// PlanSplit picks half of node from's shards (every other one, by id) to move
// to node to.
func PlanSplit(shards []Shard, from, to string) []Planned {
	var out []Planned
	i := 0
	for _, s := range shards {
		if s.Node != from {
			continue
		}
		if i%2 == 1 {
			out = append(out, Planned{Shard: s.ID, From: from, To: to})
		}
		i++
	}
	return out
}

// PlanRebalance evens out weight (bytes, or 1 per shard for counts) over the
// nodes by moving shards from the heaviest node to the lightest, each time
// the shard that evens the two best. Nodes with no shard are given in nodes
// so they can receive some.
//
// slack makes it converge (hysteresis): nothing is planned unless the
// heaviest and the lightest node differ by more than twice slack; then
// planning goes on until they differ by at most slack, and a move is planned
// only if it narrows their gap by at least slack (and by at least 1). Sizes
// that drift by less than slack after a run (a freshly copied shard is more
// compact than its source, writes go on) then plan nothing the next time.
// Give 0 for counts.
func PlanRebalance(shards []Shard, weight map[int]int64, nodes []string, slack int64) []Planned {
	slack = max(slack, 0)
	tolerance := max(slack, 1)
	load := map[string]int64{}
	for _, n := range nodes {
		load[n] = 0
	}
	byNode := map[string][]Shard{}
	for _, s := range shards {
		load[s.Node] += weight[s.ID]
		byNode[s.Node] = append(byNode[s.Node], s)
	}
	var out []Planned
	moved := map[int]bool{}
	for iter := 0; iter < len(shards); iter++ {
		var heavy, light string
		for n, l := range load {
			if heavy == "" || l > load[heavy] || (l == load[heavy] && n < heavy) {
				heavy = n
			}
			if light == "" || l < load[light] || (l == load[light] && n < light) {
				light = n
			}
		}
		gap := load[heavy] - load[light]
		if gap <= slack || (iter == 0 && gap <= 2*slack) {
			break
		}
		// The shard whose weight is closest to half the gap evens the two
		// nodes best; moving w leaves a gap of |gap - 2w|.
		cands := byNode[heavy]
		best := -1
		for k, s := range cands {
			w := weight[s.ID]
			if moved[s.ID] || w <= 0 || gap-abs64(gap-2*w) < tolerance {
				continue
			}
			if best < 0 || abs64(gap-2*w) < abs64(gap-2*weight[cands[best].ID]) ||
				(abs64(gap-2*w) == abs64(gap-2*weight[cands[best].ID]) && s.ID < cands[best].ID) {
				best = k
			}
		}
		if best < 0 {
			break
		}
		s := cands[best]
		w := weight[s.ID]
		out = append(out, Planned{Shard: s.ID, From: heavy, To: light})
		moved[s.ID] = true
		load[heavy] -= w
		load[light] += w
		byNode[heavy] = append(cands[:best:best], cands[best+1:]...)
		byNode[light] = append(byNode[light], s)
	}
	return out
}

// PlanDrain moves every shard of node from to the other nodes (to), biggest
// first, each to the node with the least weight at that point (ties by
// name). Weights below zero (unknown sizes) count as zero.
func PlanDrain(shards []Shard, weight map[int]int64, from string, to []string) []Planned {
	if len(to) == 0 {
		return nil
	}
	load := map[string]int64{}
	for _, n := range to {
		load[n] = 0
	}
	var moving []Shard
	for _, s := range shards {
		if s.Node == from {
			moving = append(moving, s)
			continue
		}
		if _, ok := load[s.Node]; ok {
			load[s.Node] += max(weight[s.ID], 0)
		}
	}
	sort.SliceStable(moving, func(i, j int) bool {
		wi, wj := max(weight[moving[i].ID], 0), max(weight[moving[j].ID], 0)
		if wi != wj {
			return wi > wj
		}
		return moving[i].ID < moving[j].ID
	})
	out := make([]Planned, 0, len(moving))
	for _, s := range moving {
		best := ""
		for _, n := range to {
			if best == "" || load[n] < load[best] || (load[n] == load[best] && n < best) {
				best = n
			}
		}
		out = append(out, Planned{Shard: s.ID, From: from, To: best})
		load[best] += max(weight[s.ID], 0)
	}
	return out
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
