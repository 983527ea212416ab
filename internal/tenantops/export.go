package tenantops

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Format is an export file's format.
type Format string

// Export formats. Each file starts with a header line naming the tenant and
// every table with its columns; Import reads all three.
const (
	// FormatSQL is a script psql can run on the tenant's shard (or through
	// the router: it sets pgtenant.tenant first): one COPY ... FROM stdin
	// block per table, in COPY's text format, parents first.
	FormatSQL Format = "sql"
	// FormatCSV is one CSV section per table, each after a line
	// "#pgtenant table NAME" and with a header row; every value that is not
	// NULL is quoted, so an unquoted empty field is NULL.
	FormatCSV Format = "csv"
	// FormatJSONL is one JSON object a line: {"table": NAME, "row": {...}}
	// with every value as PostgreSQL's text form of it (or null).
	FormatJSONL Format = "jsonl"
)

// ParseFormat checks a format name.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case FormatSQL, FormatCSV, FormatJSONL:
		return f, nil
	}
	return "", &Error{Code: "22023", Message: fmt.Sprintf("format %q is not one of sql, csv, jsonl", s)}
}

// fileHeader is the first line of an export (after its prefix).
type fileHeader struct {
	Version int         `json:"pgtenant_export"`
	Tenant  string      `json:"tenant"`
	Format  Format      `json:"format"`
	Shard   int         `json:"shard"`
	Tables  []fileTable `json:"tables"`
}

type fileTable struct {
	Name    string   `json:"name"`
	Columns []string `json:"columns"`
	// TenantColumn is set for tenant tables (Import rewrites it for --tenant).
	TenantColumn string `json:"tenant_column,omitempty"`
}

// Line prefixes of the header per format.
const (
	sqlHeaderPrefix = "-- pgtenant: "
	csvHeaderPrefix = "#pgtenant "
	csvTablePrefix  = "#pgtenant table "
)

// ExportReport counts what Export wrote.
type ExportReport struct {
	Tenant string
	Shard  int
	Tables []TableRows
}

// TableRows is a table and a row count.
type TableRows struct {
	Table string `json:"table"`
	Rows  int64  `json:"rows"`
}

// Export writes every row of tenant id in every registered table of its
// shard to w in format, read in one snapshot (a REPEATABLE READ
// transaction on the node), parents first.
func (o *Ops) Export(ctx context.Context, id string, format Format, w io.Writer) (ExportReport, error) {
	rep := ExportReport{Tenant: id}
	if _, err := ParseFormat(string(format)); err != nil {
		return rep, err
	}
	loc, err := o.locate(ctx, id)
	if err != nil {
		return rep, err
	}
	rep.Shard = loc.Shard.ID
	conn, err := connect(ctx, loc.dsn, "node "+loc.Node.Name)
	if err != nil {
		return rep, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := o.loadTables(ctx, conn, loc.Shard.Schema)
	if err != nil {
		return rep, err
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return rep, fmt.Errorf("export: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, setTenantSQL, id); err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	h := fileHeader{Version: 1, Tenant: id, Format: format, Shard: loc.Shard.ID}
	for _, t := range st.list {
		h.Tables = append(h.Tables, fileTable{Name: t.rule.Name, Columns: t.cols, TenantColumn: t.rule.TenantColumn})
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return rep, err
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	switch format {
	case FormatSQL:
		fmt.Fprintf(bw, "%s%s\n-- The rows of tenant %s, exported by pgtenant tenant export; load with\n-- pgtenant tenant import FILE, or psql on the router (it sets the tenant) or on the shard.\n",
			sqlHeaderPrefix, hb, strings.ReplaceAll(id, "\n", " "))
		fmt.Fprintf(bw, "SET client_encoding = 'UTF8';\nSET pgtenant.tenant = %s;\n", quoteLiteral(id))
	case FormatCSV:
		fmt.Fprintf(bw, "%s%s\n", csvHeaderPrefix, hb)
	case FormatJSONL:
		bw.Write(hb)
		bw.WriteByte('\n')
	}
	for _, t := range st.list {
		q := fmt.Sprintf("SELECT %s FROM %s pgtenant_t WHERE %s", colList(t.cols), pgx.Identifier{st.schema, t.rule.Name}.Sanitize(), st.cond(t, tenantSetting))
		var n int64
		switch format {
		case FormatSQL:
			fmt.Fprintf(bw, "\nCOPY %s (%s) FROM stdin;\n", pgx.Identifier{t.rule.Name}.Sanitize(), colList(t.cols))
			tag, err := tx.Conn().PgConn().CopyTo(ctx, bw, "COPY ("+q+") TO STDOUT")
			if err != nil {
				return rep, fmt.Errorf("export %s: %w", t.rule.Name, err)
			}
			n = tag.RowsAffected()
			bw.WriteString("\\.\n")
		case FormatCSV:
			fmt.Fprintf(bw, "%s%s\n", csvTablePrefix, t.rule.Name)
			tag, err := tx.Conn().PgConn().CopyTo(ctx, bw, "COPY ("+q+") TO STDOUT WITH (FORMAT csv, HEADER, FORCE_QUOTE *)")
			if err != nil {
				return rep, fmt.Errorf("export %s: %w", t.rule.Name, err)
			}
			n = tag.RowsAffected()
		case FormatJSONL:
			casts := make([]string, len(t.cols))
			for i, c := range t.cols {
				casts[i] = pgx.Identifier{c}.Sanitize() + "::text"
			}
			q := fmt.Sprintf("SELECT %s FROM %s pgtenant_t WHERE %s", strings.Join(casts, ", "), pgx.Identifier{st.schema, t.rule.Name}.Sanitize(), st.cond(t, "$1"))
			rows, err := tx.Query(ctx, q, id)
			if err != nil {
				return rep, fmt.Errorf("export %s: %w", t.rule.Name, err)
			}
			vals := make([]*string, len(t.cols))
			ptrs := make([]any, len(t.cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			name, _ := json.Marshal(t.rule.Name)
			keys := make([][]byte, len(t.cols))
			for i, c := range t.cols {
				keys[i], _ = json.Marshal(c)
			}
			_, err = pgx.ForEachRow(rows, ptrs, func() error {
				bw.WriteString(`{"table":`)
				bw.Write(name)
				bw.WriteString(`,"row":{`)
				for i := range vals {
					if i > 0 {
						bw.WriteByte(',')
					}
					bw.Write(keys[i])
					bw.WriteByte(':')
					if vals[i] == nil {
						bw.WriteString("null")
					} else {
						b, _ := json.Marshal(*vals[i])
						bw.Write(b)
					}
				}
				bw.WriteString("}}\n")
				n++
				return nil
			})
			if err != nil {
				return rep, fmt.Errorf("export %s: %w", t.rule.Name, err)
			}
		}
		rep.Tables = append(rep.Tables, TableRows{Table: t.rule.Name, Rows: n})
	}
	if err := bw.Flush(); err != nil {
		return rep, fmt.Errorf("export: write: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return rep, fmt.Errorf("export: %w", err)
	}
	return rep, nil
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
