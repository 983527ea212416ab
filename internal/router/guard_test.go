package router

import (
	"slices"
	"testing"
)

// guard's findings: a refusal (the setting named in the message), bind
// parameters to check, or nothing.
func TestGuard(t *testing.T) {
	tests := []struct {
		sql     string
		refused bool
		params  []int
	}{
		{"SELECT 1", false, nil},
		{"SELECT set_config('app.user', $1, true)", false, nil},
		{"SELECT set_config('pgtenant.tenant', $1, false)", false, nil},
		{"SELECT set_config($1, $2, true)", false, []int{1}},
		{"SELECT set_config('search_path', 'x', true)", true, nil},
		{"SELECT set_config ( /* c */ 'SEARCH_PATH' , 'x', true)", true, nil},
		{"SELECT \"set_config\"(E'search\\x5Fpath', 'x', true)", true, nil},
		{"SELECT set_config(E'search\\u005fpath', 'x', true)", true, nil},
		{"SELECT set_config('search\\137path', 'x', true)", true, nil}, // standard_conforming_strings off
		{"SELECT set_config($t$role$t$, 'x', true)", true, nil},
		{"SELECT set_config(lower('ROLE'), 'x', true)", true, nil},
		{"SELECT set_config(setting_name => 'role', new_value => 'x', is_local => true)", true, nil},
		{"SELECT 'set_config(''search_path'', ''x'', true)'", false, nil},
		{"SELECT 1; RESET search_path", true, nil},
		{"SELECT 1; RESET ALL", false, nil},
		{"SET pgtenant . tenant_id = 'x'", true, nil},
		{"SET\vpgtenant.tenant_id = 'x'", true, nil},              // \v: whitespace to PostgreSQL 16+
		{"SELECT 1; --\rSET pgtenant.tenant_id = 'x'", true, nil}, // a -- comment ends at \r too
		{"SELECT 1 -- SET ROLE x", false, nil},
		{"SELECT 1;\vSET\vLOCAL\vrole = x", true, nil},
		{"SET SESSION \"Role\" = x", true, nil},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", false, nil},
		{"RESET SESSION AUTHORIZATION", true, nil},
		{"SET pgtenant.tenant = 'x'", false, nil},
		{"UPDATE users SET role = 'admin' WHERE id = 1", false, nil},
		{"DO $$ BEGIN UPDATE users SET role = 'admin'; END $$", false, nil},
		{"DO $$ BEGIN LOOP SET ROLE x; END LOOP; END $$", true, nil},
		{"DO $$ DECLARE r text; BEGIN r := set_config('search_path', 'x', true); END $$", true, nil},
		{"DO $$ BEGIN EXECUTE format('SET %I = %L', 'search_path', 'x'); END $$", false, nil}, // dynamic: not seen
		{"DO $$ BEGIN EXECUTE 'RESET pgtenant.tenant_id'; END $$", true, nil},
		{"SELECT 'DO $$ BEGIN SET search_path = x; END $$'", false, nil},
		{"UPDATE pg_catalog.\"pg_settings\" SET setting = 'x' WHERE name = 'search_path'", true, nil},
		{"SELECT * FROM pg_settings WHERE name = 'search_path'", false, nil},
		{"pg_settings", false, nil},
		{"\"pg_settings\" x", false, nil},
		{"EXECUTE pgtenant_begin", true, nil},
		{"EXPLAIN EXECUTE \"PGTENANT_setup\"('a', 'b')", true, nil},
		{"EXECUTE my_stmt(1)", false, nil},
	}
	for _, sql := range []string{"DO $$ BEGIN EXECUTE 'PREPARE q AS SELECT 1'; END $$", "DO $$ BEGIN PREPARE q AS SELECT 1; END $$"} {
		if g := guard(sql); g == nil || !g.prepare || g.err != nil {
			t.Errorf("guard(%q) = %+v, want PREPARE noted", sql, g)
		}
	}
	for _, tt := range tests {
		g := guard(tt.sql)
		refused := g != nil && (g.err != nil || g.reserved != "") // reserved: refused by session.refuseNames
		var params []int
		if g != nil {
			params = g.params
		}
		if refused != tt.refused || !slices.Equal(params, tt.params) {
			t.Errorf("guard(%q) = refused %v params %v, want %v %v", tt.sql, refused, params, tt.refused, tt.params)
		}
	}
}
