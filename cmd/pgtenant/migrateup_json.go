package main

import (
	"errors"
	"slices"

	"github.com/pgtenant/pgtenant/internal/migrate"
)

// migrateUpJSON is `migrate up --json` (docs/cli-json.md).
type migrateUpJSON struct {
	Dir        string `json:"dir"`
	Shards     int    `json:"shards"`
	Current    int    `json:"current"`     // shards already at the latest version
	Failed     int    `json:"failed"`      // shards whose run failed
	NotStarted int    `json:"not_started"` // shards not started after a failure
	Applied    int    `json:"applied"`     // files applied, summed over shards
	// Adopted counts applied versions that had no checksum and got the
	// current file's (applied before pgtenant recorded them).
	Adopted    int   `json:"adopted"`
	DurationMS int64 `json:"duration_ms"`
	// Migrated are the shards that got versions, in shard order.
	Migrated []shardMigratedJSON `json:"migrated"`
	// Failures are the shards that failed, in shard order.
	Failures []shardFailureJSON `json:"failures"`
	// Accepted are the changed or missing applied files --allow-changed let
	// through; without it they refuse the run (Error says which).
	Accepted []string `json:"accepted"`
	Error    string   `json:"error,omitempty"`
}

type shardMigratedJSON struct {
	Shard   int     `json:"shard"`
	Schema  string  `json:"schema"`
	Node    string  `json:"node"`
	Applied []int64 `json:"applied"` // versions, ascending
}

type shardFailureJSON struct {
	Shard  int    `json:"shard"`
	Schema string `json:"schema"`
	Node   string `json:"node"`
	File   string `json:"file,omitempty"` // empty when the failure was not inside a file
	// Version is File's (0 without one); Applied the versions applied on
	// the shard before the failure.
	Version int64   `json:"version"`
	Applied []int64 `json:"applied"`
	Error   string  `json:"error"` // with the SQLSTATE when Postgres refused
}

// add records one shard's outcome (migrate.Options.Progress, called from
// the workers; the caller serialises the calls).
func (o *migrateUpJSON) add(e migrate.Event) {
	applied := e.Applied
	if applied == nil {
		applied = []int64{}
	}
	var se *migrate.ShardError
	switch {
	case errors.As(e.Err, &se):
		o.Failures = append(o.Failures, shardFailureJSON{Shard: e.Target.Shard, Schema: e.Target.Schema, Node: e.Target.Node,
			File: se.File, Version: se.Version, Applied: applied, Error: se.Cause()})
	case e.Err != nil:
		o.Failures = append(o.Failures, shardFailureJSON{Shard: e.Target.Shard, Schema: e.Target.Schema, Node: e.Target.Node,
			Applied: applied, Error: e.Err.Error()})
	case len(e.Applied) > 0:
		o.Migrated = append(o.Migrated, shardMigratedJSON{Shard: e.Target.Shard, Schema: e.Target.Schema, Node: e.Target.Node, Applied: applied})
	}
}

// finish fills in the run's totals and error.
func (o *migrateUpJSON) finish(sum migrate.Summary, err error) {
	o.Shards, o.Current, o.Failed, o.NotStarted = sum.Shards, sum.Current, sum.Failed, sum.Skipped
	o.Applied, o.Adopted, o.DurationMS = sum.Applied, sum.Adopted, sum.Duration.Milliseconds()
	for _, d := range sum.Accepted {
		o.Accepted = append(o.Accepted, d.String())
	}
	if err != nil {
		o.Error = err.Error()
	}
	slices.SortFunc(o.Migrated, func(a, b shardMigratedJSON) int { return a.Shard - b.Shard })
	slices.SortFunc(o.Failures, func(a, b shardFailureJSON) int { return a.Shard - b.Shard })
}
