package router

import (
	"encoding/json"
	"os"
	"testing"
)

// TestAccessCheck runs the cases of testdata/access_cases.json through
// accessCheck.
func TestAccessCheck(t *testing.T) {
	b, err := os.ReadFile("testdata/access_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var cases []struct {
		Comment    string `json:"comment"`
		Query      string `json:"query"`
		Restricted bool   `json:"restricted"`
		Refused    bool   `json:"refused"`
	}
	if err := json.Unmarshal(b, &cases); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		e := accessCheck(c.Query, c.Restricted)
		if got := e != nil; got != c.Refused {
			t.Errorf("%s: %q (restricted %v): refused = %v (%v), want %v", c.Comment, c.Query, c.Restricted, got, e, c.Refused)
		}
		if e != nil && !c.Restricted && !mayEscape(c.Query) {
			t.Errorf("%s: %q is refused but mayEscape skips it", c.Comment, c.Query)
		}
		if e != nil && e.Code != "42501" {
			t.Errorf("%s: code %s, want 42501", c.Comment, e.Code)
		}
	}
}
