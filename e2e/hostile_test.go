package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestRestrictedUserStringLexing: the router reads statement text with
// standard_conforming_strings on and an ASCII-safe client encoding. A client
// that switched the server to read it otherwise could hide SET ROLE of the
// node's owner inside what the router takes for a string literal, and leave
// its tenant's role (found by a hostile-client trial: a user restricted to
// t3 read shard 5). The switches are refused with 0A000, in both pool modes,
// and the hidden statement stays a string. Likewise a statement after a --
// comment that a carriage return ends (the router's lexers read the comment
// to the end of the line).
func TestRestrictedUserStringLexing(t *testing.T) {
	accessModes(t, func(t *testing.T, c *cluster, mode pgx.QueryExecMode) {
		if mode != pgx.QueryExecModeSimpleProtocol {
			return // the switches and the hidden statement are simple queries
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, tc := range []struct{ set, hidden string }{
			{"SET standard_conforming_strings = off", `SELECT 'a\''; SET ROLE postgres; --'`},
			{"SET standard_conforming_strings TO 'of'", `SELECT 'a\''; SET ROLE postgres; --'`},
			{"SELECT set_config('standard_conforming_strings', 'off', false)", `SELECT 'a\''; SET ROLE postgres; --'`},
			{"SET client_encoding = 'SJIS'", "SELECT E'\x95\\'; SET ROLE postgres; --'"},
			{"SET NAMES 'win932'", "SELECT E'\x95\\'; SET ROLE postgres; --'"},
			{"SET client_encoding TO big5", "SELECT E'\xa5\\'; SET ROLE postgres; --'"},
		} {
			conn := connectAs(t, ctx, c, userRestricted, "", mode)
			pc := conn.PgConn()
			if _, err := pc.Exec(ctx, tc.set).ReadAll(); pgCode(err) != "0A000" {
				t.Fatalf("%s: %v, want 0A000", tc.set, err)
			}
			pc.Exec(ctx, tc.hidden).ReadAll() // a string, or an error: never SET ROLE
			var user string
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user == "postgres" {
				t.Fatalf("after %s and %q: current_user %q, %v", tc.set, tc.hidden, user, err)
			}
			_, err := conn.Exec(ctx, "SELECT count(*) FROM shard_0005.items")
			wantServerDenied(t, "another shard after "+tc.set, err)
		}
		// A -- comment ends at a carriage return, as in PostgreSQL: what
		// follows one is a statement to the router's checks too.
		conn := connectAs(t, ctx, c, userRestricted, "", mode)
		if _, err := conn.PgConn().Exec(ctx, "SELECT 1; --\rSET ROLE postgres").ReadAll(); err == nil {
			t.Fatal("SET ROLE after a -- comment ended by a carriage return: accepted")
		}
		var user string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user == "postgres" {
			t.Fatalf("after SET ROLE behind a carriage return: current_user %q, %v", user, err)
		}
		// The same settings at connect time.
		for _, opt := range []string{"-c standard_conforming_strings=off", "-c client_encoding=SJIS"} {
			cfg, err := pgx.ParseConfig(c.dsnAs(userRestricted, ""))
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams["options"] = opt
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err == nil {
				conn.Close(ctx)
				t.Fatalf("connect with %s: accepted, want 0A000", opt)
			}
			if pgCode(err) != "0A000" {
				t.Fatalf("connect with %s: %v, want 0A000", opt, err)
			}
		}
	})
}

// TestRestrictedUserStartupSessionAuthorization: session_authorization as a
// startup parameter, or -c in options, is the router's, ignored with a
// warning (a session-10 hostile trial: it was replayed as a session setting
// on every backend, and a user restricted to t3 ran as any role the node's
// login may become).
func TestRestrictedUserStartupSessionAuthorization(t *testing.T) {
	accessModes(t, func(t *testing.T, c *cluster, mode pgx.QueryExecMode) {
		if mode != pgx.QueryExecModeSimpleProtocol {
			return // a startup parameter: the protocol of the statements after it does not matter
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, param := range [][2]string{{"session_authorization", "postgres"}, {"options", "-c session_authorization=postgres"}} {
			cfg, err := pgx.ParseConfig(c.dsnAs(userRestricted, ""))
			if err != nil {
				t.Fatal(err)
			}
			cfg.RuntimeParams[param[0]] = param[1]
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect with %s=%s: %v", param[0], param[1], err)
			}
			defer conn.Close(ctx)
			var user string
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user == "postgres" {
				t.Fatalf("with %s=%s: current_user %q, %v", param[0], param[1], user, err)
			}
			_, err = conn.Exec(ctx, "SELECT count(*) FROM shard_0005.items")
			wantServerDenied(t, "another shard with "+param[0]+"="+param[1], err)
		}
	})
}
