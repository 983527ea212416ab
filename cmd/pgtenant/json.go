package main

import (
	"encoding/json"
	"time"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/tenantops"
)

// The shapes --json prints, one type per command; docs/cli-json.md
// documents them. Lists are JSON arrays, never null.

// tenantLocation is `tenant locate --json`.
type tenantLocation struct {
	Tenant  string `json:"tenant"`
	Shard   int    `json:"shard"`
	Schema  string `json:"schema"`
	Node    string `json:"node"`
	State   string `json:"state"`
	Connect string `json:"connect"` // the node's DSN (password removed) with search_path set to the schema
}

// tenantJSON is one element of `tenant list --json`.
type tenantJSON struct {
	Tenant string `json:"tenant"`
	Shard  int    `json:"shard"`
	Placed string `json:"placed"` // "hash" or "explicit"
}

func placedHow(t catalog.Tenant) string {
	if t.Explicit {
		return "explicit"
	}
	return "hash"
}

func tenantsJSON(ts []catalog.Tenant) []tenantJSON {
	out := make([]tenantJSON, len(ts))
	for i, t := range ts {
		out[i] = tenantJSON{Tenant: t.ID, Shard: t.Shard, Placed: placedHow(t)}
	}
	return out
}

// nodeJSON is one element of `node list --json`.
type nodeJSON struct {
	Node   string `json:"node"`
	Shards int    `json:"shards"`
	DSN    string `json:"dsn"` // password removed
}

func nodesJSON(nodes []catalog.Node) []nodeJSON {
	out := make([]nodeJSON, len(nodes))
	for i, n := range nodes {
		out[i] = nodeJSON{Node: n.Name, Shards: n.Shards, DSN: catalog.RedactDSN(n.DSN)}
	}
	return out
}

// userJSON is one element of `user list --json`.
type userJSON struct {
	User string `json:"user"`
	// Role is the role the user's transactions run as on the nodes: the one
	// given with --role, a restricted user's shard role, or "" for the
	// runtime role (and for a restricted user whose tenant is not
	// registered, whom routers refuse).
	Role   string `json:"role"`
	Tenant string `json:"tenant,omitempty"` // a restricted user's tenant
}

func usersJSON(users []catalog.User) []userJSON {
	out := make([]userJSON, len(users))
	for i, u := range users {
		out[i] = userJSON{User: u.Name, Role: u.Role, Tenant: u.Tenant}
		if u.Tenant != "" {
			out[i].Role = ""
			if u.Shard >= 0 {
				out[i].Role = access.RestrictedRole(u.Shard)
			}
		}
	}
	return out
}

// shardJSON is one element of `shard list --json`.
type shardJSON struct {
	Shard   int    `json:"shard"`
	Schema  string `json:"schema"`
	Node    string `json:"node"`
	Bytes   *int64 `json:"bytes"` // null when the node did not answer
	Tenants int    `json:"tenants"`
	State   string `json:"state"`
	Epoch   int64  `json:"epoch"`
}

func shardsJSON(stats []catalog.ShardInfo) []shardJSON {
	out := make([]shardJSON, len(stats))
	for i, s := range stats {
		out[i] = shardJSON{Shard: s.ID, Schema: s.Schema, Node: s.Node, Tenants: s.Tenants, State: s.State, Epoch: s.Epoch}
		if s.Bytes >= 0 {
			b := s.Bytes
			out[i].Bytes = &b
		}
	}
	return out
}

// opJSON is one element of `ops --json`.
type opJSON struct {
	ID     int64           `json:"id"`
	At     time.Time       `json:"at"`
	Actor  string          `json:"actor"`
	Op     string          `json:"op"`
	OK     bool            `json:"ok"`
	Detail json.RawMessage `json:"detail"`
	Error  string          `json:"error,omitempty"`
}

func opsJSON(ops []catalog.Operation) []opJSON {
	out := make([]opJSON, len(ops))
	for i, o := range ops {
		d := json.RawMessage(o.Detail)
		if !json.Valid(d) {
			d, _ = json.Marshal(o.Detail)
		}
		out[i] = opJSON{ID: o.ID, At: o.At, Actor: o.Actor, Op: o.Op, OK: o.OK, Detail: d, Error: o.Error}
	}
	return out
}

// moveJSON is one element of `shard moves --json`.
type moveJSON struct {
	ID          int64      `json:"id"`
	Shard       int        `json:"shard"`
	From        string     `json:"from"`
	To          string     `json:"to"`
	Method      string     `json:"method"`
	Step        string     `json:"step"`
	Status      string     `json:"status"`
	Tables      int        `json:"tables"`
	TablesReady int        `json:"tables_ready"`
	Rows        int64      `json:"rows"`
	Bytes       int64      `json:"bytes"`
	PauseMS     *float64   `json:"pause_ms"` // null until the shard was fenced and released
	Error       string     `json:"error,omitempty"`
	StartedAt   time.Time  `json:"started_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	FinishedAt  *time.Time `json:"finished_at"`
}

func movesJSON(list []move.Info) []moveJSON {
	out := make([]moveJSON, len(list))
	for i, m := range list {
		out[i] = moveJSON{ID: m.ID, Shard: m.Shard, From: m.Source, To: m.Target, Method: string(m.Method), Step: string(m.Step),
			Status: m.Status, Tables: m.Progress.Tables, TablesReady: m.Progress.TablesReady, Rows: m.Progress.Rows,
			Bytes: m.Progress.Bytes, Error: m.Error, StartedAt: m.StartedAt, UpdatedAt: m.UpdatedAt, FinishedAt: m.FinishedAt}
		if m.Pause > 0 {
			p := durationMS(m.Pause)
			out[i].PauseMS = &p
		}
	}
	return out
}

// tableRowsJSON is one table of `tenant import --json` and `tenant move --json`.
type tableRowsJSON struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
}

func tableRowsList(ts []tenantops.TableRows) []tableRowsJSON {
	out := make([]tableRowsJSON, len(ts))
	for i, t := range ts {
		out[i] = tableRowsJSON(t)
	}
	return out
}

// purgeJSON is `tenant purge --json`.
type purgeJSON struct {
	Tenant string           `json:"tenant"`
	Shard  int              `json:"shard"`
	Node   string           `json:"node"`
	DryRun bool             `json:"dry_run"`
	Rows   int64            `json:"rows"` // deleted (found, with --dry-run)
	Tables []purgeTableJSON `json:"tables"`
}

// purgeTableJSON is one table of `tenant purge --json`.
type purgeTableJSON struct {
	Table   string `json:"table"`
	Rows    int64  `json:"rows"`    // found before the purge
	Deleted int64  `json:"deleted"` // 0 with --dry-run
}

func purgeReportJSON(r tenantops.PurgeReport) purgeJSON {
	out := purgeJSON{Tenant: r.Tenant, Shard: r.Shard, Node: r.Node, DryRun: r.DryRun, Rows: r.Total()}
	out.Tables = make([]purgeTableJSON, len(r.Tables))
	for i, t := range r.Tables {
		out.Tables[i] = purgeTableJSON(t)
	}
	return out
}

// importJSON is `tenant import --json`.
type importJSON struct {
	Tenant     string          `json:"tenant"`
	From       string          `json:"from"` // the tenant the file was exported from
	Shard      int             `json:"shard"`
	Node       string          `json:"node"`
	Registered bool            `json:"registered"` // the import registered the tenant (by hash)
	Rows       int64           `json:"rows"`
	Tables     []tableRowsJSON `json:"tables"`
}

func importReportJSON(r tenantops.ImportReport) importJSON {
	out := importJSON{Tenant: r.Tenant, From: r.From, Shard: r.Shard, Node: r.Node, Registered: r.Registered, Tables: tableRowsList(r.Tables)}
	for _, t := range r.Tables {
		out.Rows += t.Rows
	}
	return out
}

// tenantMoveJSON is `tenant move --json`.
type tenantMoveJSON struct {
	MoveID     int64           `json:"move_id"`
	Tenant     string          `json:"tenant"`
	From       int             `json:"from"` // shards
	To         int             `json:"to"`
	FromNode   string          `json:"from_node"`
	ToNode     string          `json:"to_node"`
	Copied     int64           `json:"copied"`      // rows copied at the snapshot
	CaughtUp   int64           `json:"caught_up"`   // queued changes applied after it
	FinalRound int64           `json:"final_round"` // of those, under the fence
	Stale      int64           `json:"stale"`       // rows left in the target by an interrupted move, deleted
	Deleted    int64           `json:"deleted"`     // rows deleted from the source after the flip
	PauseMS    float64         `json:"pause_ms"`    // fence to the flip's commit
	FenceAckMS float64         `json:"fence_ack_ms"`
	DurationMS float64         `json:"duration_ms"`
	Tables     []tableRowsJSON `json:"tables"` // the tenant's rows per table on the target at the flip
}

func tenantMoveResultJSON(r tenantops.MoveResult) tenantMoveJSON {
	return tenantMoveJSON{MoveID: r.MoveID, Tenant: r.Tenant, From: r.From, To: r.To, FromNode: r.FromNode, ToNode: r.ToNode,
		Copied: r.Copied, CaughtUp: r.CaughtUp, FinalRound: r.FinalRound, Stale: r.Stale, Deleted: r.Deleted,
		PauseMS: durationMS(r.Pause), FenceAckMS: durationMS(r.FenceAck), DurationMS: durationMS(r.Duration), Tables: tableRowsList(r.Tables)}
}
