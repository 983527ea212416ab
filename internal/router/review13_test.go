package router

// Session 13's review of the router and pool changes: each test here
// failed before its fix (see the commit that adds it).

import (
	"errors"
	"net"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtenant/pgtenant/internal/placement"
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

// --ddl refuse takes a DROP or ALTER of a temporary table made earlier in
// the same string for no schema change of the shard (stale14); but once
// that temporary table is gone, the same name finds the shard's table
// again: dropped by a schema-qualified DROP (pg_temp.x), by DISCARD TEMP,
// by the rollback of its creation, or at a COMMIT (ON COMMIT DROP). Each
// string below dropped the shard's table through a router that refuses
// DDL (before the fix: no error, the table gone).
func TestReview13DDLRefuseTempGone(t *testing.T) {
	s := startRouter(t, Config{DDL: DDLRefuse}, nil)
	c := connect(t, s, "t6", pgx.QueryExecModeSimpleProtocol)
	const table = "r13_ddl"
	for _, q := range []string{
		"CREATE TEMP TABLE r13_ddl (id int); DROP TABLE pg_temp.r13_ddl; DROP TABLE r13_ddl",
		"CREATE TEMP TABLE r13_ddl (id int); DISCARD TEMP; DROP TABLE r13_ddl",
		"BEGIN; CREATE TEMP TABLE r13_ddl (id int); ROLLBACK; DROP TABLE r13_ddl",
		"BEGIN; CREATE TEMP TABLE r13_ddl (id int) ON COMMIT DROP; COMMIT; DROP TABLE r13_ddl",
	} {
		t.Run(q, func(t *testing.T) {
			a10Table(t, "t6", table, "id int", "1")
			_, err := c.Exec(ctx(t), q)
			if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "0A000" {
				t.Errorf("%s: %v, want 0A000", q, err)
			}
			c.Exec(ctx(t), "ROLLBACK")
			if got := tableSchemas(t, table); !slices.Contains(got, placement.SchemaName(shardOf("t6"))) {
				t.Errorf("the shard's %s after %q: schemas %v, want it kept", table, q, got)
			}
		})
	}
}
