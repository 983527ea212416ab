package suiterun

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadExpected(t *testing.T) {
	for _, tc := range []struct {
		name, sep, text string
		want            map[string]string
		err             string
	}{
		{name: "entries and comments", sep: " # ",
			text: "# a comment\n\npgconn TestA # needs the backend's pid\n. TestB  #  spaced out \n",
			want: map[string]string{"pgconn TestA": "needs the backend's pid", ". TestB": "spaced out"}},
		{name: "the last separator ends the key", sep: " | ",
			text: "PG::Connection can | do | things | not through a router\n",
			want: map[string]string{"PG::Connection can | do | things": "not through a router"}},
		{name: "no reason", sep: " # ", text: "x TestA\n", err: `:1: each entry needs " # " and a reason`},
		{name: "empty reason", sep: " # ", text: "# c\nx TestA #  \n", err: `:2: each entry needs " # " and a reason`},
		{name: "listed twice", sep: " # ", text: "x TestA # one\nx TestA # two\n", err: `:2: "x TestA" is listed twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "expected-session.txt")
			if err := os.WriteFile(path, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			e, err := ReadExpected(path, tc.sep)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := len(e.Reasons), len(tc.want); got != want {
				t.Fatalf("%d entries %v, want %d", got, e.Reasons, want)
			}
			for k, r := range tc.want {
				if got := e.Reasons[k]; !e.Has(k) || got != r {
					t.Errorf("%q: reason %q, want %q", k, got, r)
				}
			}
		})
	}
}

// TestRunnersLists reads the runners' own lists: each entry has its
// reason, none is listed twice.
func TestRunnersLists(t *testing.T) {
	for _, tc := range []struct{ glob, sep string }{
		{"../pgxsuite/testdata/expected-*.txt", " # "},
		{"../nodepgsuite/testdata/expected-*.txt", " # "},
		{"../rubypgsuite/testdata/expected-*.txt", " | "},
		{"../pgjssuite/testdata/expected-*.txt", " # "},
	} {
		paths, err := filepath.Glob(tc.glob)
		if err != nil || len(paths) == 0 {
			t.Fatalf("%s: %v, %d lists", tc.glob, err, len(paths))
		}
		for _, p := range paths {
			e, err := ReadExpected(p, tc.sep)
			if err != nil {
				t.Error(err)
				continue
			}
			if len(e.Reasons) == 0 && !strings.Contains(p, "direct") {
				t.Errorf("%s: no entries", p)
			}
		}
	}
}
