package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/pgtenant/pgtenant/internal/migrate"
)

// migrateStatusJSON is `migrate status --json`.
type migrateStatusJSON struct {
	Dir    string `json:"dir"`
	Latest int64  `json:"latest"` // highest version in dir
	Shards int    `json:"shards"`
	Behind int    `json:"behind"` // shards with pending versions
	// Versions counts shards per current version, ascending.
	Versions []versionCount `json:"versions"`
	// ShardStatus lists the shards that are behind or whose applied files
	// changed (every shard with --all).
	ShardStatus []shardMigrationJSON `json:"shard_status"`
	// Drift lists applied files that changed, were renamed or are missing.
	Drift []string `json:"drift"`
	// Unrecorded lists shards with applied versions that have no recorded
	// file name and checksum (applied before pgtenant kept them).
	Unrecorded []int `json:"unrecorded_shards"`
}

type versionCount struct {
	Version int64 `json:"version"`
	Shards  int   `json:"shards"`
}

type shardMigrationJSON struct {
	Shard   int     `json:"shard"`
	Schema  string  `json:"schema"`
	Node    string  `json:"node"`
	Current int64   `json:"current"`
	Pending []int64 `json:"pending"`
	Drift   int     `json:"drift"` // applied files that changed on this shard
}

// printMigrateStatus prints where the shards stand: one line when they are
// all at the same version, else a table of the shards behind (of every
// shard with all). It returns an error (exit 1) when any shard is behind,
// or when an applied file changed and allowChanged is false.
func (a *app) printMigrateStatus(dir string, st []migrate.ShardStatus, all, allowChanged bool) error {
	sum := migrateStatusJSON{Dir: dir, Shards: len(st), Versions: []versionCount{}, ShardStatus: []shardMigrationJSON{},
		Drift: []string{}, Unrecorded: []int{}}
	byVersion := map[int64]int{}
	var pending []int64 // of the first shard behind
	samePending := true
	for _, s := range st {
		sum.Latest = max(sum.Latest, s.Latest)
		byVersion[s.Current]++
		if s.Behind() {
			sum.Behind++
			if pending == nil {
				pending = s.Pending
			} else if !slices.Equal(pending, s.Pending) {
				samePending = false
			}
		}
		if len(s.Unrecorded) > 0 {
			sum.Unrecorded = append(sum.Unrecorded, s.Target.Shard)
		}
		if s.Behind() || len(s.Drift) > 0 || all {
			p := s.Pending
			if p == nil {
				p = []int64{}
			}
			sum.ShardStatus = append(sum.ShardStatus, shardMigrationJSON{Shard: s.Target.Shard, Schema: s.Target.Schema,
				Node: s.Target.Node, Current: s.Current, Pending: p, Drift: len(s.Drift)})
		}
	}
	for v, n := range byVersion {
		sum.Versions = append(sum.Versions, versionCount{Version: v, Shards: n})
	}
	sort.Slice(sum.Versions, func(i, j int) bool { return sum.Versions[i].Version < sum.Versions[j].Version })

	slices.Sort(sum.Unrecorded)
	drifts := migrate.Drifts(st)
	for _, d := range drifts {
		sum.Drift = append(sum.Drift, d.String())
	}
	var err error
	refused := migrate.Refused(drifts, allowChanged)
	if len(refused) > 0 {
		err = &migrate.DriftError{Drifts: refused}
	} else if sum.Behind > 0 {
		err = fmt.Errorf("%d of %d shards are behind; run `pgtenant migrate up --dir %s`", sum.Behind, sum.Shards, dir)
	}
	if a.json {
		if jerr := a.printJSON(sum); jerr != nil {
			return jerr
		}
		return err
	}
	// Drift alone prints no table: its lines name the shards (--json and
	// --all list them one by one).
	uniform := len(sum.Versions) == 1 && samePending
	if all || !uniform {
		w := a.table("SHARD", "SCHEMA", "NODE", "CURRENT", "LATEST", "PENDING", "DRIFT")
		for _, s := range sum.ShardStatus {
			row(w, s.Shard, s.Schema, s.Node, s.Current, sum.Latest, len(s.Pending), s.Drift)
		}
		w.Flush()
	}
	if len(sum.Unrecorded) > 0 {
		fmt.Fprintf(a.stdout, "%s: applied versions without a checksum (applied before pgtenant recorded them); "+
			"the next `pgtenant migrate up` records the current files'\n", migrate.ShardRanges(sum.Unrecorded))
	}
	if len(refused) == 0 { // allowed: warn, whether or not shards are behind
		for _, d := range drifts {
			fmt.Fprintf(a.stderr, "warning: %s (--allow-changed)\n", d)
		}
	}
	switch {
	case len(refused) > 0:
	case sum.Behind == 0 && uniform:
		fmt.Fprintf(a.stdout, "all %d shards are current at version %d (migrations from %s)\n", sum.Shards, sum.Versions[0].Version, dir)
	case sum.Behind == 0:
		fmt.Fprintf(a.stdout, "all %d shards are current (migrations from %s)\n", sum.Shards, dir)
	case uniform:
		fmt.Fprintf(a.stdout, "all %d shards are at version %d; pending: %s (migrations from %s)\n",
			sum.Shards, sum.Versions[0].Version, joinVersions(pending), dir)
	}
	return err
}

func joinVersions(vs []int64) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ", ")
}
