package placement

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
// nodes by moving shards from the heaviest node to the lightest, biggest
// each time the shard that evens the two best, while a move narrows the gap. Nodes with no shard are
// given in nodes so they can receive some.
func PlanRebalance(shards []Shard, weight map[int]int64, nodes []string) []Planned {
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
		// The shard whose weight is closest to half the gap evens the two
		// nodes best; moving w narrows the gap only when 0 < w < gap.
		cands := byNode[heavy]
		best := -1
		for k, s := range cands {
			w := weight[s.ID]
			if moved[s.ID] || w <= 0 || w >= gap {
				continue
			}
			if best < 0 || abs64(gap-2*w) < abs64(gap-2*weight[cands[best].ID]) ||
				(abs64(gap-2*w) == abs64(gap-2*weight[cands[best].ID]) && s.ID < cands[best].ID) {
				best = k
			}
		}
		found := best >= 0
		if found {
			s := cands[best]
			w := weight[s.ID]
			out = append(out, Planned{Shard: s.ID, From: heavy, To: light})
			moved[s.ID] = true
			load[heavy] -= w
			load[light] += w
			byNode[heavy] = append(cands[:best:best], cands[best+1:]...)
			byNode[light] = append(byNode[light], s)
		}
		if !found {
			break
		}
	}
	return out
}

func abs64(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}
