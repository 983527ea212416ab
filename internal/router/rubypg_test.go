package router

import (
	"encoding/binary"
	"slices"
	"strconv"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// libpq's large-object API (lo_creat, lo_open, lo_write, ..., what
// ruby-pg's lo_* and Rails' ActiveStorage-era code call) sends
// FunctionCall messages. Large objects live in the database, in no shard
// schema (a move would leave them behind, and any tenant could open one
// by its oid), so the router refuses the function call protocol, but as a
// server refuses a statement: 0A000 and ReadyForQuery, the session going
// on (inside a transaction, failed as after a server error). It used to
// end the session with FATAL 08P01 "invalid frontend message type", so
// every later statement of ruby-pg's spec suite failed with "no
// connection to the server".
func TestFunctionCallRefused(t *testing.T) {
	loCreat := &pgproto3.FunctionCall{Function: 957, ArgFormatCodes: []uint16{1},
		Arguments: [][]byte{binary.BigEndian.AppendUint32(nil, 0x60000)}, ResultFormatCode: 1}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			fe, nc := rawConn(t, s, "t1")

			fe.Send(loCreat)
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			if got, want := readUntilRFQ(t, fe, nc), []string{"E 0A000", "Z I"}; !slices.Equal(got, want) {
				t.Fatalf("function call outside a transaction: got %v, want %v", got, want)
			}

			fe.Send(&pgproto3.Query{String: "BEGIN"})
			fe.Send(&pgproto3.Query{String: "SELECT 1"})
			fe.Send(loCreat)
			fe.Send(&pgproto3.Query{String: "SELECT 2"})
			fe.Send(&pgproto3.Query{String: "ROLLBACK"})
			fe.Send(&pgproto3.Query{String: "SELECT (SELECT shard FROM whoami)::text"})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			for i, want := range [][]string{
				{"C", "Z T"},
				{"T", "D 1", "C", "Z T"},
				{"E 0A000", "Z E"},
				{"E 25P02", "Z E"},
				{"C", "Z I"},
				{"T", "D " + strconv.Itoa(shardOf("t1")), "C", "Z I"},
			} {
				if got := readUntilRFQ(t, fe, nc); !slices.Equal(got, want) {
					t.Fatalf("answer %d: got %v, want %v", i, got, want)
				}
			}
		})
	}
}
