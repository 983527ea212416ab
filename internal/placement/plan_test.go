package placement

import "testing"

func shardsOn(counts map[string]int) []Shard {
	var out []Shard
	id := 0
	for _, n := range []string{"a", "b", "c", "d"} {
		for i := 0; i < counts[n]; i++ {
			out = append(out, Shard{ID: id, Node: n, Schema: SchemaName(id)})
			id++
		}
	}
	return out
}

func TestPlanSplit(t *testing.T) {
	shards := shardsOn(map[string]int{"a": 128, "b": 128})
	plan := PlanSplit(shards, "a", "c")
	if got, want := len(plan), 64; got != want {
		t.Fatalf("split moves %d shards, want %d", got, want)
	}
	for _, p := range plan {
		if p.From != "a" || p.To != "c" || shards[p.Shard].Node != "a" {
			t.Fatalf("bad step %+v", p)
		}
	}
}

func TestPlanRebalance(t *testing.T) {
	tests := []struct {
		name   string
		counts map[string]int
		nodes  []string
		moves  int
	}{
		{"balanced", map[string]int{"a": 4, "b": 4}, []string{"a", "b"}, 0},
		{"new empty nodes", map[string]int{"a": 8, "b": 8}, []string{"a", "b", "c", "d"}, 8},
		{"one heavy", map[string]int{"a": 6, "b": 2}, []string{"a", "b"}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			shards := shardsOn(tc.counts)
			w := map[int]int64{}
			for _, s := range shards {
				w[s.ID] = 1
			}
			plan := PlanRebalance(shards, w, tc.nodes)
			if got := len(plan); got != tc.moves {
				t.Fatalf("%d moves, want %d: %+v", got, tc.moves, plan)
			}
			load := map[string]int{}
			for _, s := range shards {
				load[s.Node]++
			}
			for _, p := range plan {
				load[p.From]--
				load[p.To]++
			}
			min, max := 1<<30, 0
			for _, n := range tc.nodes {
				if load[n] < min {
					min = load[n]
				}
				if load[n] > max {
					max = load[n]
				}
			}
			if max-min > 1 {
				t.Fatalf("after plan loads %v are not even", load)
			}
		})
	}
	// By bytes: the shard closest to half the gap moves, and that is all.
	shards := shardsOn(map[string]int{"a": 3})
	w := map[int]int64{0: 60, 1: 100, 2: 40}
	plan := PlanRebalance(shards, w, []string{"a", "b"})
	if len(plan) != 1 || plan[0].Shard != 1 || plan[0].To != "b" {
		t.Fatalf("plan %+v, want shard 1 to b only", plan)
	}
}
