package router

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Spellings of the router's reserved settings and of session-level
// advisory locks that a lexer might not follow: Unicode-escaped
// identifiers and strings (U&"..." and U&'...'), comments and whitespace
// before the call's parenthesis. Each is refused or fails on the server;
// none may leave the backend on another shard, another role or holding a
// lock for the next client.
func TestHostileReservedSpellings(t *testing.T) {
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			a := connect(t, s, "t2", mode)
			var user string
			if err := a.QueryRow(ctx(t), "SELECT current_user FROM whoami").Scan(&user); err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				`SET U&"search\005fpath" TO shard_0004`,
				`SET U&"\0072ole" TO postgres`,
				`SELECT set_config(U&'search\005fpath', 'shard_0004', false) FROM whoami`,
				`SELECT set_config(U&'\0072ole', 'postgres', false) FROM whoami`,
				`SELECT pg_catalog.set_config(U&'search!005fpath' UESCAPE '!', 'shard_0004', false) FROM whoami`,
				`SELECT U&"pg_advisory_lock"(7) FROM whoami`,
				`SELECT U&"\0070g_advisory_lock"(7) FROM whoami`,
				`SELECT pg_advisory_lock/**/(7) FROM whoami`,
				`SELECT pg_advisory_lock
(7) FROM whoami`,
				`SELECT * FROM pg_advisory_lock(7)`,
				`SELECT U&"!0070g_try_advisory_lock!+00005f!+000073hared"(7) UESCAPE '!' FROM whoami`,
				`SELECT U&"pg_advisory_lock\005fshared"(7) FROM whoami`,
				`DO $$ BEGIN PERFORM U&"\0070g_advisory_lock"(7); END $$`,
				`SET SESSION AUTHORIZATION postgres`,
				`SET SESSION AUTHORIZATION DEFAULT`,
				`RESET SESSION AUTHORIZATION`,
				`SET ROLE NONE`,
				`RESET ALL`,
				`DISCARD ALL`,
				`SELECT set_config('search_path', 'shard_0004', false) FROM whoami`,
			} {
				_, err := a.Exec(ctx(t), q)
				t.Logf("%s: %v", strings.ReplaceAll(q, "\n", " "), err)
				b := connect(t, s, "t2", mode) // the same (only) backend
				var shard int
				var path, role string
				var locks int
				if err := b.QueryRow(ctx(t), "SELECT shard, current_setting('search_path'), current_user, (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) FROM whoami").Scan(&shard, &path, &role, &locks); err != nil {
					t.Fatalf("after %s: %v", q, err)
				}
				if shard != 2 || !strings.HasPrefix(path, "shard_0002") || role != user || locks != 0 {
					t.Errorf("after %q: next client on shard %d, search_path %q, role %q, %d advisory locks", q, shard, path, role, locks)
				}
				b.Close(ctx(t))
			}
		})
	}
}
