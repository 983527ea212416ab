package router

// The differential tester's generator: a seeded, deterministic source of
// frontend message sequences (see differential_test.go). A sequence is a
// list of steps; each step is a batch of messages sent at once and ends
// with a Query or a Sync, so the answers end with a known number of
// ReadyForQuery messages.

import (
	"fmt"
	"math/rand"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// diffSQL is one statement text the generator draws from, with the number
// of parameters it takes.
type diffSQL struct {
	text   string
	params int
}

// diffData are statements on the shard's table kv (ids 1..5 at the start
// of every run) and without a table, errors among them.
var diffData = []diffSQL{
	{"SELECT 1", 0},
	{"SELECT id, v FROM kv ORDER BY id", 0},
	{"SELECT v FROM kv WHERE id = $1", 1},
	{"SELECT count(*) FROM kv", 0},
	{"INSERT INTO kv VALUES ($1, $2)", 2},
	{"UPDATE kv SET v = v || '+' WHERE id = $1", 1},
	{"DELETE FROM kv WHERE id = $1", 1},
	{"SELECT generate_series(1, 5) AS g", 0},
	{"SELECT $1::int + 1 AS n", 1},
	{"WITH d AS (DELETE FROM kv WHERE id > 3 RETURNING id) SELECT count(*) FROM d", 0},
	{"SELECT current_setting('pgtenant.tenant_id')", 0},
	{"SELECT current_schema()", 0},
	{"SHOW search_path", 0},
	{"SELECT 1/0", 0},
	{"SELEC 1", 0},
	{"SELECT * FROM nosuch", 0},
	{"SELECT $1::int", 1},
	{"INSERT INTO tmp VALUES (1)", 0},
	{"SELECT count(*) FROM tmp", 0},
	{"SELECT pg_sleep(0)", 0},
}

// diffControl are transaction control, settings and temp table
// statements: what changes the state the router keeps for a session.
var diffControl = []string{
	"BEGIN",
	"BEGIN ISOLATION LEVEL REPEATABLE READ",
	"START TRANSACTION READ ONLY",
	"COMMIT",
	"ROLLBACK",
	"END",
	"SAVEPOINT s1",
	"ROLLBACK TO SAVEPOINT s1",
	"RELEASE SAVEPOINT s1",
	"SET application_name = 'diff'",
	"SET LOCAL application_name = 'local'",
	"RESET application_name",
	"SHOW application_name",
	"SET statement_timeout = '7s'",
	"SET LOCAL statement_timeout = '9s'",
	"SHOW statement_timeout",
	"SET TimeZone = 'UTC'",
	"SET datestyle = 'ISO, DMY'",
	"SHOW DateStyle",
	"RESET ALL",
	"CREATE TEMP TABLE tmp (a int) ON COMMIT DROP",
	"SET SESSION intervalstyle = 'sql_standard'",
	"SELECT set_config('datestyle', 'SQL, DMY', false)",
	"SHOW intervalstyle",
}

// diffSimpleOnly are query strings sent only as a simple Query.
var diffSimpleOnly = []string{
	"",
	";",
	"-- a comment only",
	"/* a comment */ SELECT 2",
	"SELECT 1; SELECT 1/0; SELECT 3",
}

// diffGen generates one sequence; stmts are the statement names it has
// prepared (and the number of parameters), right or not.
type diffGen struct {
	r     *rand.Rand
	stmts map[string]int
}

// diffSequence returns the sequence of seed: 2 to 8 steps, then a
// ROLLBACK so that every run ends idle.
func diffSequence(seed int64) [][]pgproto3.FrontendMessage {
	g := &diffGen{r: rand.New(rand.NewSource(seed)), stmts: map[string]int{}}
	var steps [][]pgproto3.FrontendMessage
	for n := 2 + g.r.Intn(7); n > 0; n-- {
		if g.r.Intn(5) < 2 {
			steps = append(steps, []pgproto3.FrontendMessage{g.simple()})
		} else {
			steps = append(steps, g.extended())
		}
	}
	return append(steps, []pgproto3.FrontendMessage{&pgproto3.Query{String: "ROLLBACK"}})
}

func (g *diffGen) pick(n int) int { return g.r.Intn(n) }

// statement returns a statement text for the extended protocol.
func (g *diffGen) statement() diffSQL {
	if g.pick(3) == 0 {
		return diffSQL{diffControl[g.pick(len(diffControl))], 0}
	}
	return diffData[g.pick(len(diffData))]
}

// simple returns a Query of one statement, several, or an odd text.
func (g *diffGen) simple() *pgproto3.Query {
	switch g.pick(6) {
	case 0:
		return &pgproto3.Query{String: diffSimpleOnly[g.pick(len(diffSimpleOnly))]}
	case 1, 2:
		// Several statements: transaction control only first (BEGIN) or
		// last (COMMIT/ROLLBACK), as applications send them.
		var parts []string
		if g.pick(2) == 0 {
			parts = append(parts, "BEGIN")
		}
		for k := 1 + g.pick(3); k > 0; k-- {
			parts = append(parts, g.simpleText(true))
		}
		switch g.pick(3) {
		case 0:
			parts = append(parts, "COMMIT")
		case 1:
			parts = append(parts, "ROLLBACK")
		}
		return &pgproto3.Query{String: strings.Join(parts, "; ")}
	default:
		return &pgproto3.Query{String: g.simpleText(false)}
	}
}

// simpleText is one statement with its parameters written in; inner
// leaves out transaction control.
func (g *diffGen) simpleText(inner bool) string {
	for {
		s := g.statement()
		if inner && (isTxnControl(s.text) || s.text == "RESET ALL") { // (RESET ALL then more: 0A000, TestResetAllThenMoreRefused)
			continue
		}
		text := s.text
		for i := s.params; i >= 1; i-- {
			text = strings.ReplaceAll(text, fmt.Sprintf("$%d", i), "'"+strings.ReplaceAll(g.value(i), "'", "''")+"'")
		}
		return text
	}
}

func isTxnControl(s string) bool {
	for _, p := range []string{"BEGIN", "START", "COMMIT", "ROLLBACK", "END", "SAVEPOINT", "RELEASE"} {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// value is a parameter's text: mostly a small id, sometimes not a number.
func (g *diffGen) value(i int) string {
	if i == 2 {
		return []string{"a", "b", "it's"}[g.pick(3)]
	}
	if g.pick(12) == 0 {
		return "abc"
	}
	return fmt.Sprint(1 + g.pick(8))
}

// extended returns a pipeline of 1 to 5 units ending with Sync.
func (g *diffGen) extended() []pgproto3.FrontendMessage {
	var msgs []pgproto3.FrontendMessage
	for k := 1 + g.pick(5); k > 0; k-- {
		msgs = append(msgs, g.unit()...)
	}
	return append(msgs, &pgproto3.Sync{})
}

// stmtName is a statement name: unnamed, one made before, or a new one.
func (g *diffGen) stmtName() string {
	if g.pick(2) == 0 {
		return ""
	}
	return fmt.Sprintf("s%d", 1+g.pick(3))
}

func (g *diffGen) portalName() string {
	if g.pick(3) > 0 {
		return ""
	}
	return fmt.Sprintf("p%d", 1+g.pick(2))
}

// unit is one piece of a pipeline: Parse/Bind/Execute as a driver sends
// it, or one of its parts alone, Describe, Close or Flush.
func (g *diffGen) unit() []pgproto3.FrontendMessage {
	switch g.pick(10) {
	case 0, 1, 2, 3:
		name := g.stmtName()
		return append([]pgproto3.FrontendMessage{g.parse(name)}, g.bindExecute(name)...)
	case 4:
		return []pgproto3.FrontendMessage{g.parse(g.stmtName())}
	case 5:
		name := g.stmtName()
		if g.pick(8) == 0 {
			name = "nosuch"
		}
		return g.bindExecute(name)
	case 6:
		if g.pick(2) == 0 {
			return []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'S', Name: g.stmtName()}}
		}
		return []pgproto3.FrontendMessage{&pgproto3.Describe{ObjectType: 'P', Name: g.portalName()}}
	case 7:
		// Execute of a portal bound in an earlier step (alive only in a
		// transaction block), or suspended earlier in this one.
		return []pgproto3.FrontendMessage{&pgproto3.Execute{Portal: g.portalName(), MaxRows: uint32(g.pick(3))}}
	case 8:
		if g.pick(2) == 0 {
			return []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'S', Name: g.stmtName()}}
		}
		return []pgproto3.FrontendMessage{&pgproto3.Close{ObjectType: 'P', Name: g.portalName()}}
	default:
		return []pgproto3.FrontendMessage{&pgproto3.Flush{}}
	}
}

func (g *diffGen) parse(name string) *pgproto3.Parse {
	s := g.statement()
	p := &pgproto3.Parse{Name: name, Query: s.text}
	if s.params > 0 && g.pick(3) == 0 {
		p.ParameterOIDs = []uint32{23}
	}
	g.stmts[name] = s.params
	return p
}

// bindExecute binds name (with the parameters its text takes, or a wrong
// count or format now and then) and executes the portal, sometimes in
// pieces (max rows, portal suspended).
func (g *diffGen) bindExecute(name string) []pgproto3.FrontendMessage {
	n, ok := g.stmts[name]
	if !ok {
		n = g.pick(2)
	}
	portal := g.portalName()
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: name}
	switch g.pick(14) {
	case 0:
		n++ // wrong parameter count: 08P01
	case 1:
		if n > 0 {
			b.ParameterFormatCodes = []int16{1} // binary: 3 bytes are no int4
			b.Parameters = [][]byte{{0, 0, 1}}
			n = 0
		}
	case 2:
		b.ResultFormatCodes = []int16{7} // unknown result format
	case 3:
		b.ResultFormatCodes = []int16{0, 0, 0} // more codes than columns
	}
	for i := 1; i <= n; i++ {
		b.Parameters = append(b.Parameters, []byte(g.value(i)))
	}
	msgs := []pgproto3.FrontendMessage{b}
	if g.pick(3) == 0 {
		msgs = append(msgs, &pgproto3.Describe{ObjectType: 'P', Name: portal})
	}
	if g.pick(3) == 0 {
		msgs = append(msgs, &pgproto3.Execute{Portal: portal, MaxRows: uint32(1 + g.pick(2))}, &pgproto3.Execute{Portal: portal})
	} else {
		msgs = append(msgs, &pgproto3.Execute{Portal: portal})
	}
	return msgs
}

// diffFormat writes a frontend message as one short line for a failure
// report.
func diffFormat(m pgproto3.FrontendMessage) string {
	switch m := m.(type) {
	case *pgproto3.Query:
		return fmt.Sprintf("Query %q", m.String)
	case *pgproto3.Parse:
		return fmt.Sprintf("Parse %q %q %v", m.Name, m.Query, m.ParameterOIDs)
	case *pgproto3.Bind:
		var ps []string
		for _, p := range m.Parameters {
			ps = append(ps, fmt.Sprintf("%q", p))
		}
		return fmt.Sprintf("Bind portal=%q stmt=%q pf=%v params=[%s] rf=%v", m.DestinationPortal, m.PreparedStatement,
			m.ParameterFormatCodes, strings.Join(ps, " "), m.ResultFormatCodes)
	case *pgproto3.Describe:
		return fmt.Sprintf("Describe %c %q", m.ObjectType, m.Name)
	case *pgproto3.Execute:
		return fmt.Sprintf("Execute %q max=%d", m.Portal, m.MaxRows)
	case *pgproto3.Close:
		return fmt.Sprintf("Close %c %q", m.ObjectType, m.Name)
	case *pgproto3.Sync:
		return "Sync"
	case *pgproto3.Flush:
		return "Flush"
	}
	return fmt.Sprintf("%T", m)
}
