package nodestats

import (
	"encoding/json"
	"testing"
)

func TestSmoke(t *testing.T) {
	dsn := srv.NewDatabase(t)
	s := collect(t, connect(t, asRole(t, dsn, healthRole)))
	b, _ := json.MarshalIndent(s, "", "  ")
	t.Logf("%s", b)
}
