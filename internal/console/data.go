package console

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
)

// colors is the number of node colours the stylesheet defines (c0…c7);
// nodes past it reuse them in order.
const colors = 8

// shades is the number of size shades (s0 lightest … s5 darkest).
const shades = 6

// recentMoves is how many finished moves the overview lists after the
// running ones.
const recentMoves = 10

// Overview is everything the overview page draws (also /api/state).
type Overview struct {
	At         time.Time `json:"at"`
	MapVersion int64     `json:"map_version"`
	// Tenants is the number of registered tenants.
	Tenants int          `json:"tenants"`
	Nodes   []NodeView   `json:"nodes"`
	Shards  []ShardView  `json:"shards"`
	Moves   []MoveView   `json:"moves"`
	Routers []RouterView `json:"routers"`
	// SizesAt is when shard sizes and node reachability were read.
	SizesAt time.Time `json:"sizes_at"`
	// MaxBytes is the largest shard's size (the darkest shade).
	MaxBytes int64 `json:"max_bytes"`
	// Errors are parts that could not be read (a node, the routers).
	Errors []string `json:"errors,omitempty"`
}

// NodeView is one node as the console shows it.
type NodeView struct {
	Name string `json:"name"`
	// DSN is the node's connection string without secrets.
	DSN    string `json:"dsn"`
	Color  int    `json:"color"`
	Shards int    `json:"shards"`
	// Bytes is the sum of the sizes of its shards; -1 when unreachable.
	Bytes     int64  `json:"bytes"`
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	// Health are the node's health numbers (Config.Health); empty when not collected.
	Health []Metric `json:"health,omitempty"`
}

// ShardView is one cell of the shard map.
type ShardView struct {
	ID      int    `json:"id"`
	Schema  string `json:"schema"`
	Node    string `json:"node"`
	State   string `json:"state"`
	Epoch   int64  `json:"epoch"`
	Tenants int    `json:"tenants"`
	// Bytes is the schema's size on its node; -1 when unknown (node
	// unreachable, or moved since sizes were read).
	Bytes int64 `json:"bytes"`
	Color int   `json:"-"`
	Shade int   `json:"-"`
	// Move is the running move of this shard, if any.
	Move *MoveView `json:"move,omitempty"`
}

// MoveView is one move with its progress.
type MoveView struct {
	ID     int64  `json:"id"`
	Shard  int    `json:"shard"`
	Source string `json:"source"`
	Target string `json:"target"`
	Method string `json:"method"`
	Step   string `json:"step"`
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
	// StepNo and Steps place Step among the method's steps (1-based);
	// StepNo is 0 for a step the console does not know.
	StepNo int `json:"step_no"`
	Steps  int `json:"steps"`
	// Percent is the share of the source's bytes copied, -1 when unknown.
	Percent     int        `json:"percent"`
	Rows        int64      `json:"rows"`
	Bytes       int64      `json:"bytes"`
	SourceRows  int64      `json:"source_rows"`
	SourceBytes int64      `json:"source_bytes"`
	LagMS       float64    `json:"lag_ms"`
	PauseMS     float64    `json:"pause_ms"`
	StartedAt   time.Time  `json:"started_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	FinishedAt  *time.Time `json:"finished_at,omitempty"`
}

// Running reports whether the move is still going.
func (m MoveView) Running() bool { return m.Status == "running" }

// RouterView is one live router and the map version it applied.
type RouterView struct {
	ID           string    `json:"id"`
	Addr         string    `json:"addr"`
	AdminURL     string    `json:"admin_url,omitempty"`
	LastSeen     time.Time `json:"last_seen"`
	AckedVersion int64     `json:"acked_version"`
	// Behind is the catalog's map version minus the acknowledged one.
	Behind int64 `json:"behind"`
}

// stepsOf lists a method's steps in order, as package move records them.
func stepsOf(method move.Method) []move.Step {
	if method == move.MethodCopy {
		return []move.Step{move.StepStart, move.StepSchema, move.StepCopyData, move.StepFlipped, move.StepCleanup, move.StepDone}
	}
	return []move.Step{move.StepStart, move.StepSchema, move.StepPublication, move.StepSubscription, move.StepCopy,
		move.StepIndexes, move.StepCatchUp, move.StepFence, move.StepFlipped, move.StepCleanup, move.StepDone}
}

func moveView(in move.Info) MoveView {
	v := MoveView{ID: in.ID, Shard: in.Shard, Source: in.Source, Target: in.Target, Method: string(in.Method),
		Step: string(in.Step), Status: in.Status, Error: in.Error, Rows: in.Progress.Rows, Bytes: in.Progress.Bytes,
		SourceRows: in.Progress.SourceRows, SourceBytes: in.Progress.SourceBytes, LagMS: in.Progress.LagMS,
		PauseMS: float64(in.Pause) / float64(time.Millisecond), StartedAt: in.StartedAt, UpdatedAt: in.UpdatedAt,
		FinishedAt: in.FinishedAt, Percent: -1}
	if v.Method == "" {
		v.Method = string(move.MethodLogical)
	}
	steps := stepsOf(in.Method)
	v.Steps = len(steps)
	for i, s := range steps {
		if s == in.Step {
			v.StepNo = i + 1
		}
	}
	if in.Progress.SourceBytes > 0 {
		v.Percent = int(min(100, in.Progress.Bytes*100/in.Progress.SourceBytes))
	}
	if in.Step == move.StepDone || in.Step == move.StepFlipped || in.Step == move.StepCleanup {
		v.Percent = 100
	}
	return v
}

// Overview reads the catalog (and, at most once per SizeTTL, the nodes). An
// error is the catalog's; parts that could not be read (a node, the
// routers) are named in Overview.Errors.
func (c *Console) Overview(ctx context.Context) (*Overview, error) {
	cat := c.cfg.Catalog
	o := &Overview{At: time.Now()}
	var err error
	if o.MapVersion, err = cat.MapVersion(ctx); err != nil {
		return nil, err
	}
	shards, err := cat.Shards(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := cat.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	sample := c.nodes.get(ctx, cat, nodes, c.cfg.Health)
	o.SizesAt = sample.at
	if sample.err != nil {
		o.Errors = append(o.Errors, sample.err.Error())
	}
	infos, err := move.New(move.Config{Catalog: cat.Pool()}).List(ctx)
	if err != nil {
		return nil, err
	}
	colorOf := map[string]int{}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	for i, n := range nodes {
		colorOf[n.Name] = i % colors
		nv := NodeView{Name: n.Name, DSN: catalog.RedactDSN(n.DSN), Color: i % colors, Shards: n.Shards, Bytes: -1}
		if s, ok := sample.nodes[n.Name]; ok {
			nv.Reachable, nv.Error, nv.Health = s.err == nil, errText(s.err), s.health
			if s.err != nil {
				o.Errors = append(o.Errors, fmt.Sprintf("node %s: %v", n.Name, s.err))
			}
		}
		o.Nodes = append(o.Nodes, nv)
	}
	running := map[int]*MoveView{}
	finished := 0
	for _, in := range infos {
		v := moveView(in)
		if !v.Running() {
			if finished >= recentMoves {
				continue
			}
			finished++
		}
		o.Moves = append(o.Moves, v)
	}
	// Running moves first, each group newest first (List's order).
	sort.SliceStable(o.Moves, func(i, j int) bool { return o.Moves[i].Running() && !o.Moves[j].Running() })
	for i := range o.Moves {
		if o.Moves[i].Running() {
			running[o.Moves[i].Shard] = &o.Moves[i]
		}
	}
	nodeBytes := map[string]int64{}
	for _, s := range shards {
		sv := ShardView{ID: s.ID, Schema: s.Schema, Node: s.Node, State: s.State, Epoch: s.Epoch, Bytes: -1,
			Tenants: sample.tenants[s.ID], Color: colorOf[s.Node], Move: running[s.ID]}
		if ns, ok := sample.nodes[s.Node]; ok && ns.err == nil {
			if b, ok := ns.sizes[s.Schema]; ok {
				sv.Bytes = b
				nodeBytes[s.Node] += b
			}
		}
		o.MaxBytes = max(o.MaxBytes, sv.Bytes)
		o.Tenants += sv.Tenants
		o.Shards = append(o.Shards, sv)
	}
	for i := range o.Shards {
		o.Shards[i].Shade = shade(o.Shards[i].Bytes, o.MaxBytes)
	}
	for i := range o.Nodes {
		if o.Nodes[i].Reachable {
			o.Nodes[i].Bytes = nodeBytes[o.Nodes[i].Name]
		}
	}
	o.Routers, err = c.routerViews(ctx, o.MapVersion)
	if err != nil {
		o.Errors = append(o.Errors, err.Error())
	}
	return o, nil
}

// shade buckets a size into 0 (empty or unknown) … shades-1 (the largest).
func shade(b, maxBytes int64) int {
	if b <= 0 || maxBytes <= 0 {
		return 0
	}
	return 1 + int(float64(b)/float64(maxBytes)*float64(shades-2)+0.5)
}

func (c *Console) routerViews(ctx context.Context, version int64) ([]RouterView, error) {
	live, err := c.cfg.Catalog.LiveRouters(ctx, c.cfg.RouterWithin)
	if err != nil {
		return nil, err
	}
	urls, err := c.cfg.Catalog.RouterAdminURLs(ctx, c.cfg.RouterWithin)
	if err != nil {
		return nil, err
	}
	admin := map[string]string{}
	for _, u := range urls {
		admin[u.ID] = u.URL
	}
	out := make([]RouterView, 0, len(live))
	for _, r := range live {
		out = append(out, RouterView{ID: r.ID, Addr: r.Addr, AdminURL: admin[r.ID], LastSeen: r.LastSeen,
			AckedVersion: r.AckedVersion, Behind: max(0, version-r.AckedVersion)})
	}
	return out, nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
