package router

// Session 13's review of the router and pool changes: each test here
// failed before its fix (see the commit that adds it).

import (
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A client re-parses its unnamed statement after a schema change the
// router did not see (pgtenant migrate runs DDL on the shards directly):
// on a server a Parse analyses the text afresh, so the Describe and Bind
// that follow give the new shape, with no error. The router reused the
// earlier statement (recentUnnamed) and sent no Parse to the backend that
// had it already, whose statement was analysed before the change: the
// client, which had just parsed and described it, got 0A000 "cached plan
// must not change result type". pgx's describe-exec mode does exactly
// this for every query.
func TestReview13ReparsedUnnamedAfterDirectDDL(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, Pool: PoolConfig{MaxSize: 1}}, nil)
			table := "r13_reparse"
			ddl := a10Table(t, "t1", table, "a int", "1")
			fe, nc := rawConn(t, s, "t1")
			describeRun := []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: "SELECT a FROM r13_reparse"},
				&pgproto3.Describe{ObjectType: 'S'},
				&pgproto3.Sync{},
				&pgproto3.Bind{},
				&pgproto3.Execute{},
				&pgproto3.Sync{},
			}
			runRawSteps(t, []*pgproto3.Frontend{fe}, []net.Conn{nc}, ddl, table, []rawStep{
				{name: "describe and run", send: describeRun, want: []string{"1", "?", "T", "Z I", "2", "D 1", "C", "Z I"}},
				{name: "migration past the router", ddl: "ALTER TABLE %s ALTER COLUMN a TYPE float4"},
				{name: "parse, describe and run again", send: describeRun, want: []string{"1", "?", "T", "Z I", "2", "D 1", "C", "Z I"}},
			})
		})
	}
}
