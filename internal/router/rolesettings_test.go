package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A node role (or database) can carry settings of its own, ALTER ROLE ...
// SET, which a backend starts with: standard_conforming_strings = off, or a
// client encoding whose characters may end with a backslash byte, would
// make the server read statement texts otherwise than the router's lexer
// does (see lexsafe.go). The router's backends start with the router's
// values instead (startup parameters win over role and database settings),
// and keep them after RESET and RESET ALL, which go back to them.
func TestLexSettingsFromRole(t *testing.T) {
	for _, tt := range []struct{ role, setting string }{
		{"pgt_role_scs_off", "standard_conforming_strings = off"},
		{"pgt_role_sjis", "client_encoding = 'SJIS'"},
	} {
		t.Run(tt.role, func(t *testing.T) {
			onNodeB(t, fmt.Sprintf("CREATE ROLE %s LOGIN SUPERUSER; ALTER ROLE %[1]s SET %s", pgx.Identifier{tt.role}.Sanitize(), tt.setting))
			t.Cleanup(func() { onNodeB(t, "DROP ROLE "+pgx.Identifier{tt.role}.Sanitize()) })
			m := testMap()
			b := m.Nodes["b"]
			b.DSN = strings.Replace(nodeDSN(nodeB), "postgres://postgres@", "postgres://"+tt.role+"@", 1)
			m.Nodes["b"] = b
			for _, mode := range poolModes {
				t.Run(string(mode), func(t *testing.T) {
					s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, m)
					pc := pcConnect(t, s, "t1") // shard 1, node b
					if got := pcValue(t, pc, "SELECT current_user"); got != tt.role {
						t.Fatalf("current_user %s, want %s", got, tt.role)
					}
					for _, reset := range []string{"", "RESET standard_conforming_strings", "RESET client_encoding", "RESET ALL"} {
						if reset != "" {
							if _, err := pc.Exec(ctx(t), reset).ReadAll(); err != nil {
								t.Fatalf("%s: %v", reset, err)
							}
						}
						if got := pcValue(t, pc, "SHOW standard_conforming_strings"); got != "on" {
							t.Errorf("after %q: standard_conforming_strings %s, want on", reset, got)
						}
						if got := pcValue(t, pc, "SHOW client_encoding"); got != "UTF8" {
							t.Errorf("after %q: client_encoding %s, want UTF8", reset, got)
						}
						// Read as the router reads it: a backslash is a character.
						if got := pcValue(t, pc, `SELECT 'a\' || 'ü'`); got != `a\ü` {
							t.Errorf("after %q: 'a\\' || 'ü' reads %q, want %q", reset, got, `a\ü`)
						}
					}
				})
			}
		})
	}
}
