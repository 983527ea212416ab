package move

import (
	"os"
	"strings"
	"testing"
)

// testdata/restore-v.sql is pg_restore --verbose --file=- of a schema-only
// dump of two schemas (pg_dump 15.18 -n s1 -n s2): s1 with a function,
// identity and serial columns, a CHECK, an FK, an index, a trigger, a comment
// and grants; s2 with a table whose name looks like a header field.
func TestParseScript(t *testing.T) {
	out, err := os.ReadFile("testdata/restore-v.sql")
	if err != nil {
		t.Fatal(err)
	}
	s, err := parseScript(out)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(s.entries), 21; got != want {
		t.Errorf("entries = %d, want %d", got, want)
	}
	if strings.Contains(s.preamble, `\restrict`) || !strings.Contains(s.preamble, "SELECT pg_catalog.set_config('search_path', '', false);") {
		t.Errorf("preamble:\n%s", s.preamble)
	}
	for _, e := range s.entries {
		if strings.Contains(e.sql, `\restrict`) || strings.Contains(e.sql, `\unrestrict`) || strings.Contains(e.sql, "SET default_") {
			t.Errorf("entry %d (%s %s) keeps a meta-command or a trailing SET:\n%s", e.id, e.typ, e.name, e.sql)
		}
	}
	pre, n := s.sqlFor("s1", false, false, 0)
	if n != 13 {
		t.Errorf("s1 pre-copy entries = %d, want 13:\n%s", n, pre)
	}
	for _, want := range []string{"CREATE SCHEMA s1;", "COMMENT ON SCHEMA s1", "CREATE FUNCTION s1.f()", "CREATE TABLE s1.accounts",
		"ADD GENERATED ALWAYS AS IDENTITY", "ALTER SEQUENCE s1.items_id_seq OWNED BY", "ADD CONSTRAINT items_pkey PRIMARY KEY",
		"GRANT USAGE ON SCHEMA s1 TO app;", "GRANT SELECT ON TABLE s1.items TO app;", "SET default_table_access_method = heap;"} {
		if !strings.Contains(pre, want) {
			t.Errorf("s1 pre-copy SQL lacks %q", want)
		}
	}
	for _, not := range []string{"s2", "CREATE INDEX", "FOREIGN KEY", "CREATE TRIGGER"} {
		if strings.Contains(pre, not) {
			t.Errorf("s1 pre-copy SQL has %q", not)
		}
	}
	if i, j := strings.Index(pre, "SET default_tablespace = '';"), strings.Index(pre, "CREATE TABLE s1.accounts"); i < 0 || i > j {
		t.Errorf("the tablespace setting does not precede the first table")
	}
	post, n := s.sqlFor("s1", true, false, 0)
	if n != 3 {
		t.Errorf("s1 post-copy entries = %d, want 3:\n%s", n, post)
	}
	for _, want := range []string{"CREATE INDEX items_account_id_idx", "CREATE TRIGGER t", "FOREIGN KEY (account_id) REFERENCES s1.accounts(id)"} {
		if !strings.Contains(post, want) {
			t.Errorf("s1 post-copy SQL lacks %q", want)
		}
	}
	pre2, n := s.sqlFor("s2", false, false, 0)
	if n != 5 {
		t.Errorf("s2 pre-copy entries = %d, want 5:\n%s", n, pre2)
	}
	if strings.Contains(pre2, "s1") || !strings.Contains(pre2, `CREATE TABLE s2."odd; Type: X"`) || !strings.Contains(pre2, `"odd; Type: X_pkey" PRIMARY KEY`) {
		t.Errorf("s2 pre-copy SQL:\n%s", pre2)
	}
	local, _ := s.sqlFor("s1", false, true, 0)
	for _, want := range []string{"SET LOCAL statement_timeout = 0;", "SELECT pg_catalog.set_config('search_path', '', true);",
		"SET LOCAL check_function_bodies = false;", "SET LOCAL default_table_access_method = heap;", "CREATE TABLE s1.accounts"} {
		if !strings.Contains(local, want) {
			t.Errorf("s1 pre-copy SQL with local settings lacks %q", want)
		}
	}
	for _, l := range strings.Split(local, "\n") {
		if strings.Contains(l, ", false);") || (strings.HasPrefix(l, "SET ") && !strings.HasPrefix(l, "SET LOCAL ")) {
			t.Errorf("a session-wide setting is left: %s", l)
		}
	}
	if !s.hasSchema("s2") || s.hasSchema("s3") {
		t.Errorf("hasSchema: s2 %v, s3 %v", s.hasSchema("s2"), s.hasSchema("s3"))
	}
}

func TestEntrySplit(t *testing.T) {
	tests := []struct {
		e          scriptEntry
		post, skip bool
	}{
		{scriptEntry{typ: "TABLE", schema: "shard_0005", name: "items"}, false, false},
		{scriptEntry{typ: "CONSTRAINT", schema: "shard_0005", name: "items items_pkey"}, false, false},
		{scriptEntry{typ: "INDEX", schema: "shard_0005", name: "items_account"}, true, false},
		{scriptEntry{typ: "INDEX ATTACH", schema: "shard_0005", name: "p_1_idx"}, true, false},
		{scriptEntry{typ: "FK CONSTRAINT", schema: "shard_0005", name: "items items_account_id_fkey"}, true, false},
		{scriptEntry{typ: "TRIGGER", schema: "shard_0005", name: "items items_fill"}, true, false},
		{scriptEntry{typ: "TRIGGER", schema: "shard_0005", name: "items " + captureTrigger}, true, true},
		{scriptEntry{typ: "TRIGGER", schema: "shard_0005", name: "items " + truncateTrigger}, true, true},
		{scriptEntry{typ: "ACL", schema: "shard_0005", name: "TABLE items"}, false, false},
		{scriptEntry{typ: "PUBLICATION TABLES IN SCHEMA", schema: "-", name: "pgtenant_move_5_1 shard_0005"}, false, true},
		{scriptEntry{typ: "PUBLICATION TABLE", schema: "shard_0005", name: "p items"}, false, true},
		{scriptEntry{typ: "SEQUENCE", schema: "shard_0005", name: "items_id_seq"}, false, false},
		{scriptEntry{typ: "VIEW", schema: "shard_0005", name: "account_items"}, false, false},
	}
	for _, tt := range tests {
		if got := tt.e.postData(); got != tt.post {
			t.Errorf("postData(%+v) = %v, want %v", tt.e, got, tt.post)
		}
		if got := tt.e.skipped(); got != tt.skip {
			t.Errorf("skipped(%+v) = %v, want %v", tt.e, got, tt.skip)
		}
	}
}

// A pg_restore newer than the target writes settings the target's server
// does not know (pg_restore 17+: transaction_timeout); they are left out for it.
func TestScriptNewerSettings(t *testing.T) {
	s, err := parseScript([]byte("SET statement_timeout = 0;\nSET transaction_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n" +
		"--\n-- TOC entry 7 (class 2615 OID 16385)\n-- Name: s1; Type: SCHEMA; Schema: -; Owner: postgres\n--\n\nCREATE SCHEMA s1;\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		local     bool
		serverNum int
		want      bool
	}{{false, 150018, false}, {true, 150018, false}, {false, 170002, true}, {true, 180001, true}, {true, 0, true}} {
		sql, _ := s.sqlFor("s1", false, tt.local, tt.serverNum)
		if got := strings.Contains(sql, "transaction_timeout"); got != tt.want {
			t.Errorf("local %v, server %d: transaction_timeout set %v, want %v:\n%s", tt.local, tt.serverNum, got, tt.want, sql)
		}
		if !strings.Contains(sql, "statement_timeout = 0;") || !strings.Contains(sql, "CREATE SCHEMA s1;") {
			t.Errorf("local %v, server %d:\n%s", tt.local, tt.serverNum, sql)
		}
	}
}
