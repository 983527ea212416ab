package main

import "testing"

// Counts print with the noun in the right number.
func TestPlural(t *testing.T) {
	for _, c := range []struct {
		n    int
		one  string
		want string
	}{
		{1, "rule", "1 rule"},
		{2, "rule", "2 rules"},
		{0, "row", "0 rows"},
		{1, "reference table", "1 reference table"},
		{3, "reference table", "3 reference tables"},
		{1, "policy", "1 policy"},
		{2, "policy", "2 policies"},
		{2, "day", "2 days"},
	} {
		if got := plural(c.n, c.one); got != c.want {
			t.Errorf("plural(%d, %q) = %q, want %q", c.n, c.one, got, c.want)
		}
	}
	if got, want := plural(int64(1), "row"), "1 row"; got != want {
		t.Errorf("plural(int64(1), row) = %q, want %q", got, want)
	}
}
