package importer

import (
	"fmt"
	"regexp"
	"strings"
)

// The shapes of pg_dump --schema-only lines that withTenantColumn rewrites
// (after unqualify: the template's objects unqualified, others qualified).
var (
	dumpIdent     = `(?:"(?:[^"]|"")*"|[^\s(]+)`
	createTableRE = regexp.MustCompile(`^CREATE (?:UNLOGGED )?TABLE (` + dumpIdent + `) \($`)
	keyRE         = regexp.MustCompile(`^(\s*ADD CONSTRAINT ` + dumpIdent + ` (?:PRIMARY KEY|UNIQUE(?: NULLS (?:NOT )?DISTINCT)?) \()`)
	foreignKeyRE  = regexp.MustCompile(`^(\s*ADD CONSTRAINT ` + dumpIdent + ` FOREIGN KEY \()([^)]*)(\) REFERENCES )(` + dumpIdent + `)\(([^)]*)\)(.*)$`)
	setNullRE     = regexp.MustCompile(`ON DELETE SET (NULL|DEFAULT)(;|$| [^(])`)
	uniqueIndexRE = regexp.MustCompile(`^(CREATE UNIQUE INDEX ` + dumpIdent + ` ON (?:ONLY )?` + dumpIdent + ` USING \w+ \()`)
)

// withTenantColumn rewrites the template's schema-only dump (unqualified)
// into the shards' tables: each table gains the tenant column first (NOT
// NULL, by default the router's pgtenant.tenant_id, so an app that never
// names the column writes its tenant's rows), which comes first in every
// primary key, unique constraint and unique index (ids are unique per
// tenant schema only), and in every foreign key between the template's
// tables (a row references its own tenant's rows); a foreign key that sets
// NULL or the default on delete sets only its own columns. Foreign keys to
// other schemas' tables (public's reference tables) are left as they are.
// Sequence names are unqualified as well (pg_dump writes
// nextval('schema.seq'::regclass)).
func withTenantColumn(ddl, template, column, colType string) string {
	col := quoteIdentIfNeeded(column)
	def := "current_setting('pgtenant.tenant_id'::text)"
	if colType != "text" {
		def += "::" + colType
	}
	// Inside the string constant, the schema's quotes are doubled.
	qual := regexp.QuoteMeta(strings.ReplaceAll(quoteIdentIfNeeded(template), `'`, `''`))
	seqRE := regexp.MustCompile(`nextval\('` + qual + `\.`)
	lines := strings.Split(ddl, "\n")
	var out []string
	for i, line := range lines {
		line = seqRE.ReplaceAllString(line, "nextval('")
		switch {
		case createTableRE.MatchString(line):
			out = append(out, line)
			sep := ","
			if i+1 < len(lines) && strings.HasPrefix(lines[i+1], ")") {
				sep = ""
			}
			out = append(out, fmt.Sprintf("    %s %s DEFAULT %s NOT NULL%s", col, colType, def, sep))
			continue
		case keyRE.MatchString(line):
			line = keyRE.ReplaceAllString(line, "${1}"+escapeRepl(col)+", ")
		case foreignKeyRE.MatchString(line):
			m := foreignKeyRE.FindStringSubmatch(line)
			if !qualified(m[4]) {
				rest := setNullRE.ReplaceAllString(m[6], "ON DELETE SET $1 ("+escapeRepl(m[2])+")$2")
				line = m[1] + col + ", " + m[2] + m[3] + m[4] + "(" + col + ", " + m[5] + ")" + rest
			}
		case uniqueIndexRE.MatchString(line):
			line = uniqueIndexRE.ReplaceAllString(line, "${1}"+escapeRepl(col)+", ")
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

func escapeRepl(s string) string { return strings.ReplaceAll(s, "$", "$$") }

// quoteIdentIfNeeded is name as pg_dump writes an identifier.
func quoteIdentIfNeeded(name string) string {
	if regexp.MustCompile(`^[a-z_][a-z0-9_]*$`).MatchString(name) {
		return name
	}
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// qualified reports whether a dumped name has a schema (a dot outside
// double quotes).
func qualified(name string) bool {
	quoted := false
	for _, r := range name {
		switch {
		case r == '"':
			quoted = !quoted
		case r == '.' && !quoted:
			return true
		}
	}
	return false
}
