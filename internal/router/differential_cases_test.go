package router

// Sequences the differential tester found (see differential_test.go),
// each once a router bug, kept as regression cases.

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

type fm = pgproto3.FrontendMessage

// diffCases are the sequences, named by what they showed.
var diffCases = []struct {
	name string
	seq  [][]fm
}{
	{"hang after a deferred START TRANSACTION's portal (seed 97)", [][]fm{
		{&pgproto3.Query{String: "SELECT 1"}},
		{&pgproto3.Parse{Query: "START TRANSACTION READ ONLY"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Sync{}},
		{&pgproto3.Execute{}, &pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "ROLLBACK"}},
	}},
	{"hang: Execute of no portal after a deferred BEGIN, then a Bind", [][]fm{
		{&pgproto3.Query{String: "SELECT 1"}},
		{&pgproto3.Query{String: "BEGIN"}},
		{&pgproto3.Execute{}, &pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "p2"}, &pgproto3.Execute{Portal: "p2"}, &pgproto3.Sync{}},
		{&pgproto3.Query{String: "ROLLBACK"}},
	}},
}

// TestDifferentialCases runs diffCases on PostgreSQL and the router in
// both pool modes.
func TestDifferentialCases(t *testing.T) {
	targets := diffTargets(t)
	for i, c := range diffCases {
		t.Run(c.name, func(t *testing.T) { diffCheckSeq(t, targets, int64(-1-i), c.seq) })
	}
}
