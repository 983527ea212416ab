package router

import "testing"

// TestReview12HiddenDDL: schema changes the lexer and guard still miss.
func TestReview12HiddenDDL(t *testing.T) {
	for _, q := range []string{
		"EXPLAIN ANALYZE SELECT 1 AS a INTO review12_t",
		"WITH a AS (SELECT 1 AS x) SELECT * INTO review12_t FROM a",
		"SELECT 1 INTO review12_t", // control
	} {
		if !classify(q).ddl {
			t.Errorf("classify(%q).ddl = false, want true", q)
		}
	}
	for _, q := range []string{
		"DO $$ BEGIN EXECUTE 'CREATE TABLE review12_t ()'; END $$", // control
		"DO $$ BEGIN COMMENT ON TABLE items IS 'x'; END $$",
		"DO $$ BEGIN GRANT SELECT ON items TO public; END $$",
	} {
		info := classify(q)
		g := guard(q)
		if !(info.guardScan && g != nil && g.ddl) && !info.ddl {
			t.Errorf("%q: guardScan %v, guard ddl %v, want a schema change", q, info.guardScan, g != nil && g.ddl)
		}
	}
}
