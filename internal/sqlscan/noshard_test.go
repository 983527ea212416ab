package sqlscan

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*_cases.json with the decisions made now")

// testCase is one entry of testdata/noshard_cases.json.
type testCase struct {
	Comment  string `json:"comment"`
	Query    string `json:"query"`
	Decision string `json:"decision"`
}

// TestDecideCases checks every case in testdata/*_cases.json (vtgate
// style); -update rewrites the decisions, to be reviewed in the diff.
func TestDecideCases(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*_cases.json"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no case files: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var cases []testCase
		if err := json.Unmarshal(b, &cases); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for i := range cases {
			tc := &cases[i]
			got := Decide(tc.Query).String()
			if *update {
				tc.Decision = got
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", filepath.Base(file), i), func(t *testing.T) {
				if got != tc.Decision {
					t.Errorf("%s\n%s\n got %s\nwant %s", tc.Comment, tc.Query, got, tc.Decision)
				}
			})
		}
		if *update {
			out, err := json.MarshalIndent(cases, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, append(out, '\n'), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestCache(t *testing.T) {
	c := NewCache(64 * 8)
	for i := 0; i < 100; i++ {
		q := fmt.Sprintf("SELECT %d FROM pg_class", i)
		if d := c.Decide(q); !d.AnyNode {
			t.Fatalf("%s: %v", q, d)
		}
	}
	if got := c.Len(); got == 0 || got > 64*8/len("SELECT 10 FROM pg_class") {
		t.Fatalf("cache holds %d texts, over its budget", got)
	}
	if d := c.Decide("SELECT * FROM items"); d.AnyNode {
		t.Fatalf("items: %v", d)
	}
	if d := c.Decide("SELECT * FROM items"); d.AnyNode || !strings.Contains(d.Reason, "items") {
		t.Fatalf("cached items: %v", d)
	}
	long := "SELECT 1 FROM pg_class WHERE relname = '" + strings.Repeat("x", 100) + "'"
	if d := c.Decide(long); !d.AnyNode {
		t.Fatalf("long: %v", d)
	}
}

func BenchmarkDecide(b *testing.B) {
	q := "SELECT t.oid, t.typname, t.typelem, t.typdelim, t.typinput, r.rngsubtype, t.typtype, t.typbasetype FROM pg_type as t LEFT JOIN pg_range as r ON oid = rngtypid WHERE t.typtype IN ('r', 'e', 'd')"
	for b.Loop() {
		Decide(q)
	}
}

func BenchmarkCacheHit(b *testing.B) {
	c := NewCache(0)
	q := "SELECT count(*) FROM pg_tables"
	c.Decide(q)
	for b.Loop() {
		c.Decide(q)
	}
}
