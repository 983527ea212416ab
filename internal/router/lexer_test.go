package router

import "testing"

func TestClassify(t *testing.T) {
	tests := []struct {
		sql  string
		want stmtInfo
	}{
		{"SELECT 1", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"select * from t", stmtInfo{kind: kSelect, dml: true}},
		{"SELECT 'from' AS x", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"SELECT now() -- from comment", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"/* tenant: acme */ SELECT * FROM t", stmtInfo{kind: kSelect, hint: "acme", hasHint: true, dml: true}},
		{"SELECT * FROM t /* tenant=\"o'x\" */", stmtInfo{kind: kSelect, hint: "o'x", hasHint: true, dml: true}},
		{"/* not a hint */ /* tenant:  b c  */ UPDATE t SET x = 1", stmtInfo{kind: kOther, hint: "b c", hasHint: true, dml: true}},
		{"  begin", stmtInfo{kind: kBegin}},
		{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", stmtInfo{kind: kBegin}},
		{"COMMIT", stmtInfo{kind: kCommit, endsTxn: true}},
		{"end", stmtInfo{kind: kCommit, endsTxn: true}},
		{"ROLLBACK", stmtInfo{kind: kRollback, endsTxn: true}},
		{"ROLLBACK TO SAVEPOINT a", stmtInfo{kind: kOther, rollbackTo: true}},
		{"rollback work to a", stmtInfo{kind: kOther, rollbackTo: true}},
		{"COMMIT AND CHAIN", stmtInfo{kind: kCommit, endsTxn: true}},
		{"COMMIT PREPARED 'x'", stmtInfo{kind: kOther}},
		{"PREPARE TRANSACTION 'x'", stmtInfo{kind: kOther, endsTxn: true, guardScan: true}},
		{"PREPARE q AS SELECT 1", stmtInfo{kind: kPrepare, sqlPrepare: true, guardScan: true}},
		{"CALL p(1)", stmtInfo{kind: kOther, callsProc: true}},
		{"SELECT 1; DO $$ BEGIN COMMIT; END $$", stmtInfo{kind: kSelect, multi: true, callsProc: true, guardScan: true}},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT 2", stmtInfo{kind: kOther, multi: true, ddl: true}},
		{"ROLLBACK TO a; SELECT 2", stmtInfo{kind: kOther, multi: true, rollbackTo: true}},
		{"SELECT 1; COMMIT AND CHAIN", stmtInfo{kind: kSelect, multi: true, endsTxn: true}},
		{"SET pgtenant.tenant = 'acme'", stmtInfo{kind: kSet, noShard: true, op: opSet, val: "acme", setName: "pgtenant.tenant", guardScan: true}},
		{"set pgtenant.tenant to 'it''s'", stmtInfo{kind: kSet, noShard: true, op: opSet, val: "it's", setName: "pgtenant.tenant", guardScan: true}},
		{"SET SESSION pgtenant.tenant = acme", stmtInfo{kind: kSet, noShard: true, op: opSet, val: "acme", setName: "pgtenant.tenant", guardScan: true}},
		{"SET LOCAL pgtenant.tenant = E'a\\\\b'", stmtInfo{kind: kSet, noShard: true, op: opSetLocal, val: `a\b`, isLocal: true, setName: "pgtenant.tenant", guardScan: true}},
		{"SET pgtenant.tenant = DEFAULT", stmtInfo{kind: kSet, noShard: true, op: opReset, setName: "pgtenant.tenant", guardScan: true, setDefault: true}},
		{"SET search_path TO DEFAULT", stmtInfo{kind: kSet, noShard: true, setName: "search_path", reservedSet: true, guardScan: true, setDefault: true}},
		{"SET search_path TO default_schema", stmtInfo{kind: kSet, noShard: true, setName: "search_path", reservedSet: true, guardScan: true}},
		{"RESET pgtenant.tenant", stmtInfo{kind: kReset, noShard: true, op: opReset, setName: "pgtenant.tenant", guardScan: true}},
		{"SHOW pgtenant.tenant", stmtInfo{kind: kShow, op: opShow, setName: "pgtenant.tenant", noShard: true}},
		{"SHOW TimeZone", stmtInfo{kind: kShow, setName: "timezone", noShard: true}},
		{"SET search_path = x", stmtInfo{kind: kSet, noShard: true, setName: "search_path", reservedSet: true, guardScan: true}},
		{"SET pgtenant.tenant_id = 'x'", stmtInfo{kind: kSet, noShard: true, setName: "pgtenant.tenant_id", reservedSet: true, guardScan: true}},
		{"SET statement_timeout = 5", stmtInfo{kind: kSet, noShard: true, setName: "statement_timeout", guardScan: true}},
		{"SELECT set_config('pgtenant.tenant', $1, false)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, op: opSetConfig, param: 1, plainSetConfig: true, dml: true, guardScan: true}},
		{"select pg_catalog.set_config('pgtenant.tenant', 'acme', true)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, op: opSetConfig, val: "acme", isLocal: true, plainSetConfig: true, dml: true, guardScan: true}},
		{"SELECT set_config('pgtenant.tenant', $1, $2)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, op: opSetConfig, param: 1, dml: true, guardScan: true}},
		{"SELECT set_config('pgtenant.tenant', $1, false), 1", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, op: opSetConfig, param: 1, dml: true, guardScan: true}},
		{"SELECT 1; SET statement_timeout = 5", stmtInfo{kind: kSelect, multi: true, laterSet: true, guardScan: true}},
		{"SELECT 1;\n  reset ALL", stmtInfo{kind: kSelect, multi: true, laterSet: true, guardScan: true}},
		{"UPDATE t SET x = 1; SELECT 1", stmtInfo{kind: kOther, multi: true}},
		{"SELECT 1; /* c */ DEALLOCATE ALL", stmtInfo{kind: kSelect, multi: true, laterDiscard: true, guardScan: true}},
		{"SELECT 1; SELECT my.set_config_x()", stmtInfo{kind: kSelect, multi: true}},
		{"SELECT 1; SELECT my.set_config('a', 'b', false)", stmtInfo{kind: kSelect, multi: true, callsSetConfig: true, guardScan: true}},
		{"SELECT set_config('search_path', $1, false)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, dml: true, guardScan: true, pathSetConfig: true, param: 1}},
		{"SELECT pg_catalog.set_config('search_path', 'a, b', true)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, dml: true, guardScan: true, pathSetConfig: true, val: "a, b", isLocal: true}},
		{"SELECT set_config('search_path', 'a', false) FROM t", stmtInfo{kind: kSelect, callsSetConfig: true, dml: true, guardScan: true}},
		{"SELECT set_config('app.user', $1, true)", stmtInfo{kind: kSelect, callsSetConfig: true, localSetConfig: true, noShard: true, dml: true, guardScan: true}},
		{"select pg_catalog.set_config('app.user', 'u1', 'on')", stmtInfo{kind: kSelect, callsSetConfig: true, localSetConfig: true, noShard: true, dml: true, guardScan: true}},
		{"SELECT set_config('app.user', $1, false)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, dml: true, guardScan: true, paramSetConfig: true, param: 1}},
		{"SELECT set_config('Search_Path', $1, true)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, dml: true, guardScan: true, pathSetConfig: true, param: 1, isLocal: true}},
		{"SELECT set_config($1, $2, true)", stmtInfo{kind: kSelect, callsSetConfig: true, noShard: true, dml: true, guardScan: true}},
		{"BEGIN; SELECT 1", stmtInfo{kind: kBegin, multi: true}},
		{"COMMIT; BEGIN", stmtInfo{kind: kCommit, multi: true, endsTxn: true, txnThenMore: true}},
		{"INSERT INTO t VALUES (1); commit;", stmtInfo{kind: kOther, multi: true, endsTxn: true}},
		{"SELECT 1; Rollback; (SELECT 2)", stmtInfo{kind: kSelect, multi: true, endsTxn: true, txnThenMore: true}},
		{"SELECT 1; END; SELECT 'commit; x'", stmtInfo{kind: kSelect, multi: true, endsTxn: true, txnThenMore: true}},
		{"PREPARE TRANSACTION 'x'; SELECT 1", stmtInfo{kind: kOther, multi: true, endsTxn: true, txnThenMore: true, guardScan: true}},
		{"SELECT 1; SELECT commit FROM t; SELECT 2", stmtInfo{kind: kSelect, multi: true}},
		{"SELECT 1;", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"SELECT $$ ; from $$", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"SELECT $tag$ it's $tag$, \"from\"", stmtInfo{kind: kSelect, noShard: true, dml: true}},
		{"LISTEN x", stmtInfo{kind: kListen}},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT 1", stmtInfo{kind: kOther, dml: true}},
		{"insert into t values (1)", stmtInfo{kind: kOther, dml: true}},
		{"VACUUM t", stmtInfo{kind: kOther}},
		{"SELECT 1; VACUUM t", stmtInfo{kind: kSelect, multi: true}},
		{"COPY t FROM STDIN", stmtInfo{kind: kCopy}},
		{"", stmtInfo{}},
		{"/* unterminated", stmtInfo{}},
		{"SELECT 'unterminated", stmtInfo{kind: kSelect, noShard: true, dml: true}},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got := classify(tt.sql)
			got.firstEnd = 0 // TestClassifySplit
			if got != tt.want {
				t.Errorf("classify(%q)\n got %+v\nwant %+v", tt.sql, got, tt.want)
			}
		})
	}
}

// TestClassifySplit: where the first statement ends, and whether a later
// one names the tenant (see session.onQueryParts).
func TestClassifySplit(t *testing.T) {
	tests := []struct {
		sql         string
		firstEnd    int
		laterTenant bool
	}{
		{"SET pgtenant.tenant = 'a'; SELECT 1", 26, false},
		{"SELECT ';'; SELECT 2", 11, false},
		{"SELECT 1", 0, false},
		{"SELECT 1;", 9, false},
		{"BEGIN; SET LOCAL pgtenant.tenant = 'a'; SELECT 1", 6, true},
		{"SELECT 1; set pgtenant.tenant to a", 9, true},
		{"SELECT 1; RESET pgtenant.tenant", 9, true},
		{"SELECT 1; SHOW pgtenant.tenant", 9, true},
		{"SELECT 1; SET SESSION pgtenant.tenant = a", 9, true},
		{"SELECT 1; SELECT pgtenant.tenant FROM pgtenant", 9, false},
		{"SELECT 1; SET statement_timeout = 1", 9, false},
	}
	for _, tt := range tests {
		got := classify(tt.sql)
		if got.firstEnd != tt.firstEnd || got.laterTenant != tt.laterTenant {
			t.Errorf("classify(%q): firstEnd %d, laterTenant %v; want %d, %v", tt.sql, got.firstEnd, got.laterTenant, tt.firstEnd, tt.laterTenant)
		}
	}
}

func FuzzClassify(f *testing.F) {
	for _, s := range []string{"SELECT 1", "/* tenant: a */ SET pgtenant.tenant = 'x'", "SELECT $a$ $a", "E'\\", "SET LOCAL",
		"DO $$ BEGIN EXECUTE 'SET search_path TO x'; END $$", "SELECT set_config(E'\\u00", `SET U&"a`, "SET \"pgtenant\".", "DO '"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, sql string) {
		classify(sql)
		guard(sql)
	})
}

func BenchmarkClassifyQuoted(b *testing.B) {
	benchClassify(b, `SELECT "public"."User"."id", "public"."User"."email" FROM "public"."User" WHERE "public"."User"."id" = $1 LIMIT $2`)
}

func BenchmarkClassify(b *testing.B) {
	benchClassify(b, "SELECT val FROM items WHERE id = $1")
}

// BenchmarkClassifyHinted is the simple Query of BenchmarkHotPath and of
// routerbench: a tenant hint in a comment, then a point select.
func BenchmarkClassifyHinted(b *testing.B) {
	benchClassify(b, "/* tenant: t3 */ SELECT val FROM items WHERE id = 1")
}

// benchClassify times classify(sql), also as this process's CPU time per
// call (cpu-ns/op), which other processes on a loaded machine sway less
// than the time on the clock.
func benchClassify(b *testing.B, sql string) {
	b.ReportAllocs()
	cpu0 := processCPU(b)
	n := 0
	for b.Loop() {
		classify(sql)
		n++
	}
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(n), "cpu-ns/op")
}

// TestEqFold: keywords compare as PostgreSQL's lexer folds them, A-Z only.
// strings.EqualFold also folds "ſ" (U+017F) to "s" and the Kelvin sign to
// "k", which the server does not: "ſelect" is an identifier to it.
func TestEqFold(t *testing.T) {
	for _, c := range []struct {
		s, t string
		want bool
	}{
		{"SELECT", "select", true},
		{"SeLeCt", "select", true},
		{"select", "select", true},
		{"selec", "select", false},
		{"selecT_", "select_", true},
		{"ſelect", "select", false},
		{"\u212Aey", "key", false},
		{"[elect", "{elect", false}, // '[' and '{' differ by 0x20 too
		{"", "", true},
	} {
		if got := eqFold(c.s, c.t); got != c.want {
			t.Errorf("eqFold(%q, %q) = %v, want %v", c.s, c.t, got, c.want)
		}
	}
	if got := classify("ſelect 1").kind; got == kSelect {
		t.Errorf(`classify("ſelect 1").kind = kSelect; the server reads an identifier`)
	}
}

// TestIdentBytes: the byte table says what the comparisons it replaced said.
func TestIdentBytes(t *testing.T) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		start := b == '_' || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b >= 0x80
		part := start || (b >= '0' && b <= '9') || b == '$'
		if isIdentStart(b) != start || isIdent(b) != part {
			t.Errorf("byte %#x: isIdentStart %v isIdent %v, want %v %v", b, isIdentStart(b), isIdent(b), start, part)
		}
	}
}
