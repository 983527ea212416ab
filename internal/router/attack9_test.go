package router

// Hostile-client trials (session 12) of the code session 11 landed: the
// listening guard of a session-mode client (UNLISTEN * and DISCARD ALL as
// the lexer reads them), schema changes hidden from the lexer (ddl.go),
// the shape check of a statement prepared afresh (stale.go), a cancel
// racing the pool wait, and a client message cut by the idle watch.

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// A session-mode client listening on tenant t4's node may not switch to
// another tenant until it stops listening (its backend would hear t4's
// notifications for it). Before, "UNLISTEN *" and "DISCARD ALL" were
// matched as text: any '*' (or "all") in an UNLISTEN (DISCARD) statement
// cleared the guard, though the backend still listened, and the client,
// switched to t6 on the same node and backend, heard t4's notification. A
// LISTEN after another statement in one Query never set it.
func TestHostileListenGuardSpellings(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	for _, sql := range []string{
		"UNLISTEN a9other; SELECT '*'",
		`UNLISTEN "*"`,
		"UNLISTEN a9other /* * */",
		"UNLISTEN a9other -- *",
		"UNLISTEN *; LISTEN a9ch",
		"DISCARD PLANS /* all */",
		"DISCARD SEQUENCES; SELECT 'all'",
		"SELECT 1; LISTEN a9ch",
	} {
		t.Run(sql, func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
			other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
			channel := "a9ch"
			if strings.Contains(sql, "LISTEN a9ch") {
				channel = "" // the statement itself listens
			}
			a := a8Client(t, s, channel, nil)
			if got := a.q(sql); strings.Contains(got, "E(") {
				t.Fatalf("%s: %s", sql, got)
			}
			if got := a.q("SET pgtenant.tenant = 't6'"); got != "C(SET) ZI" {
				t.Fatalf("SET t6: %s", got)
			}
			got := a.q(who)
			if strings.HasPrefix(got, "E(0A000:") {
				return // still listening: the switch is refused
			}
			t.Errorf("switch to t6 while the backend listens: %s", got)
			if got == "D(6,t6) C(SELECT 1) ZI" {
				notifyAndSee(t, other, a, "a9ch", "t4's, heard on t6")
			}
		})
	}
}

// A session-mode client listening on t4 that selected t5 (another node)
// can stop listening: UNLISTEN runs on the backend that listens. Before,
// it was refused like any statement for t5 (0A000 "cannot switch tenant
// while listening"), and the client had to select t4 again first. A LISTEN
// by Parse/Bind/Execute holds the session to its tenant as one by Query.
func TestHostileUnlistenOtherTenant(t *testing.T) {
	const who = "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami"
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 4}}, nil)
	other := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	a := a8Client(t, s, "", nil)
	// The first LISTEN for another tenant than the backend's: it moves.
	// (Before, the guard was set before the statement was routed: 0A000.)
	if got := a.q(who); got != "D(4,t4) C(SELECT 1) ZI" {
		t.Fatalf("t4: %s", got)
	}
	if got := a.q("SET pgtenant.tenant = 't6'"); got != "C(SET) ZI" {
		t.Fatalf("SET t6: %s", got)
	}
	if got := a.q("LISTEN a9first"); got != "C(LISTEN) ZI" {
		t.Errorf("a first LISTEN for t6: %s", got)
	}
	if got := a.q("UNLISTEN *"); got != "C(UNLISTEN) ZI" {
		t.Fatalf("UNLISTEN *: %s", got)
	}
	if got := a.q("SET pgtenant.tenant = 't4'"); got != "C(SET) ZI" {
		t.Fatalf("SET t4: %s", got)
	}
	a.send(&pgproto3.Parse{Query: "LISTEN a9ext"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := a.recv(1); got != "P B C(LISTEN) ZI" {
		t.Fatalf("LISTEN by Parse: %s", got)
	}
	notifyAndSee(t, other, a, "a9ext", "to t4")
	if got := a.q("SET pgtenant.tenant = 't6'"); got != "C(SET) ZI" {
		t.Fatalf("SET t6: %s", got)
	}
	if got := a.q(who); !strings.HasPrefix(got, "E(0A000:") {
		t.Errorf("t6 on the same node after a LISTEN by Parse: %s", got)
	}
	if got := a.q("SET pgtenant.tenant = 't5'"); got != "C(SET) ZI" {
		t.Fatalf("SET t5: %s", got)
	}
	if got := a.q(who); !strings.HasPrefix(got, "E(0A000:") {
		t.Errorf("t5 while listening: %s", got)
	}
	if got := a.q("UNLISTEN *"); got != "C(UNLISTEN) ZI" {
		t.Errorf("UNLISTEN * with t5 selected: %s", got)
	}
	if got := a.q(who); got != "D(5,t5) C(SELECT 1) ZI" {
		t.Errorf("t5 after UNLISTEN *: %s", got)
	}
	if got := a.q("SELECT count(*) FROM pg_listening_channels()"); got != "D(0) C(SELECT 1) ZI" {
		t.Errorf("t5's backend listens: %s", got)
	}
}
