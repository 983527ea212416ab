package move

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/jackc/pgx/v5"
)

// schemaCache shares schema dumps among the moves of one MoveAll batch: the
// first move from a node dumps the schemas of every shard the batch plans to
// move off that node (one pg_dump and one pg_restore for all of them), and
// each move takes its own schema's entries from that script. A shard whose
// definition changed on the source since the dump (a migration during the
// batch) is dumped again on its own: each schema's catalog fingerprint is
// taken before the dump and compared when its move restores it.
type schemaCache struct {
	m       *Mover
	schemas map[string][]string // source node -> schemas planned to leave it
	mu      sync.Mutex
	nodes   map[string]*nodeScript
}

// nodeScript is one source node's dump of the batch's schemas.
type nodeScript struct {
	ready  chan struct{} // closed once script, prints and err are set
	script *schemaScript
	prints map[string]string // schema -> fingerprint taken before the dump
	err    error
}

// newSchemaCache reads the schemas of the planned shards. Plans without a
// source node (From "") are left to dump on their own.
func (m *Mover) newSchemaCache(ctx context.Context, plans []Plan) (*schemaCache, error) {
	ids := make([]int, 0, len(plans))
	from := map[int]string{}
	for _, p := range plans {
		if p.From != "" {
			ids = append(ids, p.Shard)
			from[p.Shard] = p.From
		}
	}
	c := &schemaCache{m: m, schemas: map[string][]string{}, nodes: map[string]*nodeScript{}}
	if len(ids) == 0 {
		return c, nil
	}
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT id, schema_name FROM pgtenant.shards WHERE id = ANY($1) ORDER BY id`, ids)
	if err != nil {
		return nil, fmt.Errorf("read the planned shards' schemas: %w", err)
	}
	var id int
	var schema string
	if _, err := pgx.ForEachRow(rows, []any{&id, &schema}, func() error {
		c.schemas[from[id]] = append(c.schemas[from[id]], schema)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the planned shards' schemas: %w", err)
	}
	return c, nil
}

// script returns the batch's script holding mv's schema, dumping the source
// node's planned schemas on first use; nil when the schema is not planned
// from mv's source or changed since the dump.
func (c *schemaCache) script(ctx context.Context, mv *moveRun, src *pgx.Conn) (*schemaScript, error) {
	if c == nil {
		return nil, nil
	}
	planned := false
	for _, s := range c.schemas[mv.Source] {
		planned = planned || s == mv.Schema
	}
	if !planned {
		return nil, nil
	}
	c.mu.Lock()
	ns, ok := c.nodes[mv.Source]
	if !ok {
		ns = &nodeScript{ready: make(chan struct{})}
		c.nodes[mv.Source] = ns
	}
	c.mu.Unlock()
	if !ok {
		ns.script, ns.prints, ns.err = c.m.dumpNode(ctx, mv.SourceDSN, src, c.schemas[mv.Source])
		close(ns.ready)
	}
	select {
	case <-ns.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ns.err != nil {
		// The batch's dump failed (e.g. a schema planned from this node was
		// dropped meanwhile): each move dumps its own schema, and fails on its own.
		c.m.log.Warn("dump of the batch's schemas failed; each move dumps its own", "node", mv.Source, "err", ns.err)
		return nil, nil
	}
	now, err := schemaPrints(ctx, src, []string{mv.Schema})
	if err != nil {
		return nil, err
	}
	if before, ok := ns.prints[mv.Schema]; !ok || before != now[mv.Schema] || !ns.script.hasSchema(mv.Schema) {
		c.m.log.Info("the shard's definition changed since the batch's dump; dumping it again", "move", mv.ID, "shard", mv.Shard)
		return nil, nil
	}
	return ns.script, nil
}

// dumpNode takes the fingerprints of schemas on the source, then dumps them
// all in one pg_dump and turns the dump into a script.
func (m *Mover) dumpNode(ctx context.Context, dsn string, conn *pgx.Conn, schemas []string) (*schemaScript, map[string]string, error) {
	prints, err := schemaPrints(ctx, conn, schemas)
	if err != nil {
		return nil, nil, err
	}
	s, err := m.dumpScript(ctx, dsn, schemas)
	if err != nil {
		return nil, nil, err
	}
	return s, prints, nil
}

// dumpScript dumps schemas (schema only) from the database at dsn and returns the dump as a script.
func (m *Mover) dumpScript(ctx context.Context, dsn string, schemas []string) (*schemaScript, error) {
	dir, err := os.MkdirTemp("", "pgtenant-move-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	dump, err := m.dumpSchemas(ctx, dir, dsn, schemas)
	if err != nil {
		return nil, err
	}
	return m.loadScript(ctx, dump)
}

// schemaPrints returns a fingerprint of each schema's definition: the row
// versions (xmin) of every catalog row pg_dump reads for it. Any DDL, GRANT
// or COMMENT on the schema or its objects writes a new row version, so equal
// fingerprints mean an unchanged definition. (VACUUM and ANALYZE update
// pg_class in place and keep xmin; freezing keeps it too.)
func schemaPrints(ctx context.Context, conn *pgx.Conn, schemas []string) (map[string]string, error) {
	rows, err := conn.Query(ctx, `WITH n AS (SELECT oid, nspname FROM pg_namespace WHERE nspname = ANY($1)),
	c AS (SELECT c.oid, n.nspname FROM pg_class c JOIN n ON n.oid = c.relnamespace),
	p AS (SELECT p.oid, n.nspname FROM pg_proc p JOIN n ON n.oid = p.pronamespace),
	t AS (SELECT t.oid, n.nspname FROM pg_type t JOIN n ON n.oid = t.typnamespace),
	k AS (SELECT k.oid, n.nspname FROM pg_constraint k JOIN n ON n.oid = k.connamespace),
	v AS (
		SELECT n.nspname, 'n' || x.xmin AS r FROM pg_namespace x JOIN n ON n.oid = x.oid
		UNION ALL SELECT c.nspname, 'c' || x.oid || ':' || x.xmin FROM pg_class x JOIN c ON c.oid = x.oid
		UNION ALL SELECT c.nspname, 'a' || x.attrelid || '.' || x.attnum || ':' || x.xmin FROM pg_attribute x JOIN c ON c.oid = x.attrelid
		UNION ALL SELECT c.nspname, 'd' || x.oid || ':' || x.xmin FROM pg_attrdef x JOIN c ON c.oid = x.adrelid
		UNION ALL SELECT c.nspname, 'i' || x.indexrelid || ':' || x.xmin FROM pg_index x JOIN c ON c.oid = x.indrelid
		UNION ALL SELECT c.nspname, 'g' || x.oid || ':' || x.xmin FROM pg_trigger x JOIN c ON c.oid = x.tgrelid
		UNION ALL SELECT c.nspname, 'o' || x.oid || ':' || x.xmin FROM pg_policy x JOIN c ON c.oid = x.polrelid
		UNION ALL SELECT c.nspname, 'w' || x.oid || ':' || x.xmin FROM pg_rewrite x JOIN c ON c.oid = x.ev_class
		UNION ALL SELECT c.nspname, 's' || x.seqrelid || ':' || x.xmin FROM pg_sequence x JOIN c ON c.oid = x.seqrelid
		UNION ALL SELECT c.nspname, 'h' || x.inhrelid || '.' || x.inhseqno || ':' || x.xmin FROM pg_inherits x JOIN c ON c.oid = x.inhrelid
		UNION ALL SELECT c.nspname, 'e' || x.classid || '.' || x.objid || '.' || x.objsubid || '.' || x.refobjid || ':' || x.xmin
			FROM pg_depend x JOIN c ON c.oid = x.objid AND x.classid = 'pg_class'::regclass
		UNION ALL SELECT k.nspname, 'k' || x.oid || ':' || x.xmin FROM pg_constraint x JOIN k ON k.oid = x.oid
		UNION ALL SELECT p.nspname, 'p' || x.oid || ':' || x.xmin FROM pg_proc x JOIN p ON p.oid = x.oid
		UNION ALL SELECT t.nspname, 't' || x.oid || ':' || x.xmin FROM pg_type x JOIN t ON t.oid = x.oid
		UNION ALL SELECT t.nspname, 'm' || x.oid || ':' || x.xmin FROM pg_enum x JOIN t ON t.oid = x.enumtypid
		UNION ALL SELECT n.nspname, 'x' || x.oid || ':' || x.xmin FROM pg_statistic_ext x JOIN n ON n.oid = x.stxnamespace
		UNION ALL SELECT n.nspname, 'f' || x.oid || ':' || x.xmin FROM pg_default_acl x JOIN n ON n.oid = x.defaclnamespace
		UNION ALL SELECT o.nspname, 'D' || x.classoid || '.' || x.objoid || '.' || x.objsubid || ':' || x.xmin
			FROM pg_description x JOIN (SELECT oid, nspname FROM n UNION ALL SELECT * FROM c UNION ALL SELECT * FROM p
				UNION ALL SELECT * FROM t UNION ALL SELECT * FROM k) o ON o.oid = x.objoid)
	SELECT nspname, md5(string_agg(r, ',' ORDER BY r)) FROM v GROUP BY nspname`, schemas)
	if err != nil {
		return nil, fmt.Errorf("fingerprint schemas: %w", err)
	}
	out := map[string]string{}
	var name, print string
	if _, err := pgx.ForEachRow(rows, []any{&name, &print}, func() error {
		out[name] = print
		return nil
	}); err != nil {
		return nil, fmt.Errorf("fingerprint schemas: %w", err)
	}
	return out, nil
}
