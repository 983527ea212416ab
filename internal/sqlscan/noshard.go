package sqlscan

import (
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Decision says whether a statement text can run on any node, without a
// tenant's shard.
type Decision struct {
	// AnyNode is set when every statement of the text reads only the
	// system catalogs (see Decide).
	AnyNode bool
	// Reason says, when AnyNode is false, what needs a shard (or why the
	// text could not be judged).
	Reason string
}

// String is "any node" or "shard: " and the reason.
func (d Decision) String() string {
	if d.AnyNode {
		return "any node"
	}
	return "shard: " + d.Reason
}

// Decide parses sql with PostgreSQL's own parser and reports whether it
// needs no shard. The rule: every statement is a SELECT (VALUES, TABLE,
// set operations, WITH of SELECTs), SHOW, or EXPLAIN of such a SELECT,
// without INTO or FOR UPDATE/SHARE, that
//   - reads only relations of pg_catalog or information_schema: qualified
//     so, or unqualified and named pg_* (they resolve against the search_path
//     of the router's backends without a tenant, which is just pg_catalog),
//     or the name of one of its own WITH queries;
//   - calls only functions and operators that are unqualified or in
//     pg_catalog or information_schema, other than those that read or
//     write table data or run SQL text (nextval, query_to_xml, lo_import,
//     ...);
//   - names no relation outside the catalogs in a regclass literal
//     ('users'::regclass).
//
// A text that does not parse needs a shard: the server will say what is
// wrong once a tenant is named.
func Decide(sql string) Decision {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return Decision{Reason: "does not parse: " + err.Error()}
	}
	if len(tree.Stmts) == 0 {
		return Decision{Reason: "no statement"}
	}
	var c checker
	for _, raw := range tree.Stmts {
		n := raw.GetStmt()
		switch {
		case n.GetVariableShowStmt() != nil:
			continue
		case n.GetExplainStmt() != nil:
			n = n.GetExplainStmt().GetQuery()
			if n.GetSelectStmt() == nil {
				return Decision{Reason: "EXPLAIN of a statement other than SELECT"}
			}
		case n.GetSelectStmt() == nil:
			return Decision{Reason: fmt.Sprintf("%s is not a read of the catalogs", stmtName(n))}
		}
		c.ctes = map[string]bool{}
		collectCTEs(n.GetSelectStmt().ProtoReflect(), c.ctes)
		c.walk(n.GetSelectStmt().ProtoReflect())
		if c.reason != "" {
			return Decision{Reason: c.reason}
		}
	}
	return Decision{AnyNode: true}
}

// stmtName is a statement node's kind: "InsertStmt" and so on.
func stmtName(n *pg_query.Node) string {
	if n == nil || n.GetNode() == nil {
		return "an empty statement"
	}
	return strings.TrimPrefix(fmt.Sprintf("%T", n.GetNode()), "*pg_query.Node_")
}

// catalogSchemas are the schemas a statement without a tenant may read.
var catalogSchemas = map[string]bool{"pg_catalog": true, "information_schema": true}

// tableFunctions read or write table data, sequences or files, or run SQL
// text: a statement that calls one needs a shard even when it reads only
// the catalogs.
var tableFunctions = map[string]bool{
	"nextval": true, "currval": true, "setval": true, "lastval": true,
	"query_to_xml": true, "query_to_xmlschema": true, "query_to_xml_and_xmlschema": true,
	"table_to_xml": true, "table_to_xmlschema": true, "table_to_xml_and_xmlschema": true,
	"cursor_to_xml": true, "cursor_to_xmlschema": true,
	"schema_to_xml": true, "schema_to_xmlschema": true, "schema_to_xml_and_xmlschema": true,
	"database_to_xml": true, "database_to_xmlschema": true, "database_to_xml_and_xmlschema": true,
	"pg_read_file": true, "pg_read_binary_file": true, "pg_ls_dir": true, "pg_stat_file": true,
	"lo_import": true, "lo_export": true, "lo_get": true, "lo_put": true, "lo_create": true, "lo_creat": true,
	"lo_from_bytea": true, "lo_unlink": true, "lo_open": true, "loread": true, "lowrite": true, "lo_truncate": true,
	"lo_truncate64": true, "dblink": true, "dblink_exec": true,
}

type checker struct {
	ctes   map[string]bool
	reason string
}

// collectCTEs adds the names of every WITH query in m to names.
func collectCTEs(m protoreflect.Message, names map[string]bool) {
	if cte, ok := m.Interface().(*pg_query.CommonTableExpr); ok {
		names[cte.GetCtename()] = true
	}
	eachChild(m, func(c protoreflect.Message) { collectCTEs(c, names) })
}

// eachChild calls f for every message directly under m.
func eachChild(m protoreflect.Message, f func(protoreflect.Message)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				f(l.Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			f(v.Message())
		}
		return true
	})
}

func (c *checker) fail(format string, args ...any) {
	if c.reason == "" {
		c.reason = fmt.Sprintf(format, args...)
	}
}

func (c *checker) walk(m protoreflect.Message) {
	if c.reason != "" {
		return
	}
	switch n := m.Interface().(type) {
	case *pg_query.SelectStmt:
		if n.GetIntoClause() != nil {
			c.fail("SELECT INTO creates a table")
		}
		if len(n.GetLockingClause()) > 0 {
			c.fail("SELECT with a locking clause")
		}
	case *pg_query.RangeVar:
		c.relation(n.GetCatalogname(), n.GetSchemaname(), n.GetRelname())
	case *pg_query.FuncCall:
		c.function(names(n.GetFuncname()))
	case *pg_query.A_Expr:
		if op := names(n.GetName()); len(op) > 1 && !catalogSchemas[op[0]] {
			c.fail("operator %s", strings.Join(op, "."))
		}
	case *pg_query.TypeCast:
		c.regclass(n)
	default:
		if name := string(m.Descriptor().Name()); strings.HasSuffix(name, "Stmt") {
			c.fail("%s inside the statement", name)
		}
	}
	eachChild(m, c.walk)
}

// relation checks one relation the statement reads.
func (c *checker) relation(catalog, schema, rel string) {
	switch {
	case catalog != "":
		c.fail("relation %s.%s.%s", catalog, schema, rel)
	case schema != "":
		if !catalogSchemas[schema] {
			c.fail("relation %s.%s", schema, rel)
		}
	case c.ctes[rel]:
	case !strings.HasPrefix(rel, "pg_"):
		c.fail("relation %s", rel)
	}
}

// function checks one function the statement calls.
func (c *checker) function(name []string) {
	if len(name) == 0 {
		return
	}
	if len(name) > 2 || (len(name) == 2 && !catalogSchemas[name[0]]) {
		c.fail("function %s", strings.Join(name, "."))
		return
	}
	if fn := name[len(name)-1]; tableFunctions[fn] {
		c.fail("function %s reads or writes data", fn)
	}
}

// regclass checks 'name'::regclass: the name is resolved as a relation.
func (c *checker) regclass(tc *pg_query.TypeCast) {
	tn := names(tc.GetTypeName().GetNames())
	if len(tn) == 0 || tn[len(tn)-1] != "regclass" {
		return
	}
	s := tc.GetArg().GetAConst().GetSval()
	if s == nil {
		return
	}
	parts, err := splitName(s.GetSval())
	if err != nil {
		c.fail("regclass %q: %v", s.GetSval(), err)
		return
	}
	switch len(parts) {
	case 1:
		c.relation("", "", parts[0])
	case 2:
		c.relation("", parts[0], parts[1])
	default:
		c.relation(parts[0], parts[1], parts[2])
	}
}

// names returns the String values of a name list.
func names(ns []*pg_query.Node) []string {
	out := make([]string, 0, len(ns))
	for _, n := range ns {
		if s := n.GetString_(); s != nil {
			out = append(out, s.GetSval())
		}
	}
	return out
}

// splitName splits a relation name as regclass input reads it: dotted
// parts, each folded to lower case unless double-quoted.
func splitName(s string) ([]string, error) {
	var parts []string
	s = strings.TrimSpace(s)
	for {
		var p string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '"' {
					if i+1 < len(s) && s[i+1] == '"' {
						b.WriteByte('"')
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated quoted name")
			}
			p, s = b.String(), s[i+1:]
		} else {
			j := strings.IndexByte(s, '.')
			if j < 0 {
				j = len(s)
			}
			p, s = strings.ToLower(strings.TrimSpace(s[:j])), s[j:]
		}
		parts = append(parts, p)
		s = strings.TrimSpace(s)
		if s == "" {
			break
		}
		if s[0] != '.' {
			return nil, fmt.Errorf("invalid name syntax")
		}
		s = strings.TrimSpace(s[1:])
	}
	if len(parts) > 3 {
		return nil, fmt.Errorf("improper relation name (too many dotted names)")
	}
	return parts, nil
}
