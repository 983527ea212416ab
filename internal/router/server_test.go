package router

import (
	"strconv"
	"testing"
)

// The map from statement texts to backend names stays bounded however many
// distinct texts clients prepare, the same text keeps its name while it is
// known, and a name is never given to two texts.
func TestServerNameBounded(t *testing.T) {
	s := New(Config{})
	first := s.serverName("SELECT 0", nil)
	if again := s.serverName("SELECT 0", nil); again != first {
		t.Fatalf("same text, names %s and %s", first, again)
	}
	if other := s.serverName("SELECT 0", []byte{0, 1, 0, 0, 0, 23}); other == first {
		t.Fatalf("other parameter types, same name %s", first)
	}
	seen := map[string]bool{first: true}
	for i := 1; i < 3*maxStmtIDs; i++ {
		n := s.serverName("SELECT "+strconv.Itoa(i), nil)
		if seen[n] {
			t.Fatalf("name %s given twice", n)
		}
		seen[n] = true
	}
	if l := len(s.stmtIDs); l > maxStmtIDs {
		t.Fatalf("%d texts remembered, want at most %d", l, maxStmtIDs)
	}
}
