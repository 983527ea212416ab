package console

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/migrate"
)

// metaMigrationsDir is the catalog setting `migrate up` records.
const metaMigrationsDir = "migrations_dir"

// Migrations is the migrations page: where the shards stand.
type Migrations struct {
	// Dir is the migrations directory compared with; empty when none is
	// known (then nothing is pending).
	Dir string
	// DirError says why Dir could not be read.
	DirError string
	Latest   int64
	Shards   int
	// Behind counts shards with pending versions; Drifted those whose
	// applied files changed, were renamed or are missing.
	Behind, Drifted int
	// Versions counts the shards at each current version, ascending.
	Versions []VersionRow
	ReadAt   time.Time
}

// VersionRow is the shards at one version.
type VersionRow struct {
	Version int64
	Shards  int
	// Which are those shards' ids as ranges ("0-5, 9").
	Which string
	// Pending counts the versions those shards lack.
	Pending int
}

// migrationsCache keeps the last reading for ttl (it reads every shard).
type migrationsCache struct {
	ttl time.Duration
	mu  sync.Mutex
	cur *Migrations
}

// emptyDir is a migrations directory with no files.
type emptyDir struct{}

func (emptyDir) Open(name string) (fs.File, error) {
	return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
}
func (emptyDir) ReadDir(string) ([]fs.DirEntry, error) { return nil, nil }

// Migrations reads every shard's applied versions (at most once per
// SizeTTL) and compares them with the migrations directory.
func (c *Console) Migrations(ctx context.Context) (*Migrations, error) {
	c.migr.mu.Lock()
	defer c.migr.mu.Unlock()
	if cur := c.migr.cur; cur != nil && time.Since(cur.ReadAt) < c.migr.ttl {
		return cur, nil
	}
	cat := c.cfg.Catalog
	m := &Migrations{ReadAt: time.Now(), Dir: c.cfg.MigrationsDir}
	if m.Dir == "" {
		dir, err := cat.Meta(ctx, metaMigrationsDir)
		if err != nil {
			return m, err
		}
		m.Dir = dir
	}
	var fsys fs.FS = emptyDir{}
	if m.Dir != "" {
		if st, err := os.Stat(m.Dir); err != nil || !st.IsDir() {
			m.DirError = fmt.Sprintf("cannot read %s from here: pending versions are not shown", m.Dir)
		} else {
			fsys = os.DirFS(m.Dir)
		}
	}
	shards, err := cat.Shards(ctx)
	if err != nil {
		return m, err
	}
	nodes, err := cat.Nodes(ctx)
	if err != nil {
		return m, err
	}
	dsn := map[string]string{}
	for _, n := range nodes {
		if dsn[n.Name], err = cat.ResolveDSN(n.DSN); err != nil {
			return m, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	targets := make([]migrate.Target, len(shards))
	for i, s := range shards {
		targets[i] = migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]}
	}
	st, err := migrate.Status(ctx, fsys, targets)
	if err != nil {
		return m, fmt.Errorf("read the shards' migration versions: %w", err)
	}
	type group struct {
		ids     []int
		pending int
	}
	byVersion := map[int64]*group{}
	for _, s := range st {
		m.Shards++
		m.Latest = max(m.Latest, s.Latest)
		if s.Behind() {
			m.Behind++
		}
		if len(s.Drift) > 0 {
			m.Drifted++
		}
		g := byVersion[s.Current]
		if g == nil {
			g = &group{}
			byVersion[s.Current] = g
		}
		g.ids = append(g.ids, s.Target.Shard)
		g.pending = max(g.pending, len(s.Pending))
	}
	for v, g := range byVersion {
		m.Versions = append(m.Versions, VersionRow{Version: v, Shards: len(g.ids), Which: migrate.ShardRanges(g.ids), Pending: g.pending})
	}
	sort.Slice(m.Versions, func(i, j int) bool { return m.Versions[i].Version < m.Versions[j].Version })
	c.migr.cur = m
	return m, nil
}
