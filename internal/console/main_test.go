package console

import (
	"testing"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// srvA holds the catalog and node a's database; srvB node b's.
var srvA, srvB *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) { srvA, srvB = s[0], s[1] })
}
