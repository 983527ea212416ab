package importer

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// maxSchemasPerUnit bounds the tenant schemas one copy unit reads (one
// UNION ALL arm each).
const maxSchemasPerUnit = 200

// planApartment cuts the tables not complete everywhere into units for a
// legacy database with a schema per tenant: the small tables of many
// tenant schemas together (up to about unitBytes of heap), a large one
// alone in ranges of its heap blocks. Each row is read with its schema's
// tenant twice: as text, for the demultiplexer, and in the tenant column's
// type, as the shard table's first column.
func (cs *copyState) planApartment(ctx context.Context, legacy *pgx.Conn, order []copyTable, unitBytes int64) ([]copyUnit, error) {
	ap := cs.ap
	schemas := ap.sortedSchemas()
	var blockSize int64
	if err := legacy.QueryRow(ctx, `SELECT current_setting('block_size')::bigint`).Scan(&blockSize); err != nil {
		return nil, fmt.Errorf("read the block size: %w", err)
	}
	per := max(unitBytes/blockSize, 1)
	var units []copyUnit
	for i := range order {
		t := &order[i]
		nodes := cs.incomplete(t.rule.Name)
		if len(nodes) == 0 {
			continue
		}
		rows, err := legacy.Query(ctx, `SELECT s, coalesce(pg_relation_size(to_regclass(quote_ident(s) || '.' || quote_ident($2))), 0) / $3
			FROM unnest($1::text[]) s`, schemas, t.rule.Name, blockSize)
		if err != nil {
			return nil, fmt.Errorf("read the size of %s: %w", t.rule.Name, err)
		}
		size := map[string]int64{}
		var s string
		var b int64
		if _, err := pgx.ForEachRow(rows, []any{&s, &b}, func() error { size[s] = b; return nil }); err != nil {
			return nil, fmt.Errorf("read the size of %s: %w", t.rule.Name, err)
		}
		var group []string
		var groupBlocks int64
		flush := func() {
			if len(group) == 0 {
				return
			}
			arms := make([]string, len(group))
			for k, sc := range group {
				arms[k] = ap.unitArm(sc, *t, 0, -1)
			}
			units = append(units, copyUnit{table: t, index: len(units), from: 0, to: -1, est: max(groupBlocks, 1), nodes: nodes, query: strings.Join(arms, " UNION ALL ")})
			group, groupBlocks = nil, 0
		}
		for _, sc := range schemas {
			blocks := size[sc]
			if blocks > per && !t.selfRef {
				for k, from := 0, int64(0); from < blocks; k, from = k+1, from+per {
					to := from + per
					est := per
					if to >= blocks {
						to, est = -1, blocks-from
					}
					units = append(units, copyUnit{table: t, index: len(units), from: from, to: to, est: est, nodes: nodes, query: ap.unitArm(sc, *t, from, to)})
				}
				continue
			}
			if groupBlocks+blocks > per || len(group) == maxSchemasPerUnit {
				flush()
			}
			group = append(group, sc)
			groupBlocks += blocks
		}
		flush()
	}
	return units, nil
}

// unitArm reads blocks [from, to) of the table of tenant schema schema
// (to -1: to the end) with the schema's tenant first: as text (the
// demultiplexer's), then in the tenant column's type (the shard's).
func (ap *apartment) unitArm(schema string, t copyTable, from, to int64) string {
	lit := quoteLiteral(ap.schemas[schema])
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT %s::text, %s::%s", lit, lit, ap.colType)
	for _, c := range t.cols {
		b.WriteString(", pgtenant_t." + pgx.Identifier{c}.Sanitize())
	}
	b.WriteString(" FROM " + pgx.Identifier{schema, t.rule.Name}.Sanitize() + " pgtenant_t")
	b.WriteString(blockRange(from, to))
	return b.String()
}

// prepareLegacyApartment is prepareLegacy for a legacy database with a
// schema per tenant: the marker table, and the publication of every tenant
// schema's tables (each has a primary key, checked by import init, so no
// replica identity changes).
func (im *Importer) prepareLegacyApartment(ctx context.Context, legacy *pgx.Conn, imp *Import, ap *apartment) error {
	if _, err := legacy.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+markerSchema+`;
		CREATE TABLE IF NOT EXISTS `+markerSchema+`.`+markerTable+` (shard int NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shard, seq))`); err != nil {
		return fmt.Errorf("create the marker table on the legacy database: %w", err)
	}
	var exists bool
	if err := legacy.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, PublicationName).Scan(&exists); err != nil {
		return fmt.Errorf("look for publication %s: %w", PublicationName, err)
	}
	if !exists {
		tenant, _, err := ap.rules(ctx, legacy)
		if err != nil {
			return err
		}
		names := []string{markerSchema + "." + markerTable}
		for _, s := range ap.sortedSchemas() {
			for _, t := range tenant {
				names = append(names, pgx.Identifier{s, t.Name}.Sanitize())
			}
		}
		if _, err := legacy.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{PublicationName}.Sanitize()+" FOR TABLE "+strings.Join(names, ", ")); err != nil {
			return fmt.Errorf("create publication %s on the legacy database: %w", PublicationName, err)
		}
	}
	if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET publication = $1, updated_at = now()`, PublicationName); err != nil {
		return fmt.Errorf("record the publication: %w", err)
	}
	imp.Publication = PublicationName
	return nil
}
