package sqlscan

import (
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// TestQuoteIdentifier checks QuoteIdentifier against what PostgreSQL's
// quote_ident() returns for the same names (PostgreSQL 15 and 18 agree on
// every one of these).
func TestQuoteIdentifier(t *testing.T) {
	for _, tc := range []struct{ name, want string }{
		{"shard_0003", "shard_0003"},
		{"shard_10000", "shard_10000"},
		{"public", "public"},
		{"pg_temp", "pg_temp"},
		{"pg_catalog", "pg_catalog"},
		{"_x", "_x"},
		{"ext", "ext"},
		{"a1", "a1"},
		{"", `""`},
		{"1abc", `"1abc"`},
		{"Public", `"Public"`},
		{"shard-3", `"shard-3"`},
		{"two words", `"two words"`},
		{`say "hi"`, `"say ""hi"""`},
		{`"`, `""""`},
		{"a$b", `"a$b"`}, // $ is legal in an unquoted name after the first character, but quote_identifier quotes it
		{"münchen", `"münchen"`},
		{"租户", `"租户"`},
		{"back\\slash", `"back\slash"`},
		{"o'brien", `"o'brien"`},
		// Keywords: unreserved ones stay bare, the others are quoted.
		{"user", `"user"`},       // reserved
		{"select", `"select"`},   // reserved
		{"on", `"on"`},           // reserved (also a SET value)
		{"true", `"true"`},       // reserved
		{"default", `"default"`}, // reserved
		{"between", `"between"`}, // column name
		{"int", `"int"`},         // column name
		{"left", `"left"`},       // type or function name
		{"authorization", `"authorization"`},
		{"schema", "schema"}, // unreserved
		{"data", "data"},     // unreserved
		{"local", "local"},   // unreserved
		{"none", `"none"`},   // column name
		{"off", "off"},       // not a keyword
		{"abort", "abort"},   // unreserved
		{"zone", "zone"},     // unreserved, the list's last word
	} {
		if got := QuoteIdentifier(tc.name); got != tc.want {
			t.Errorf("QuoteIdentifier(%q) = %s, want %s", tc.name, got, tc.want)
		}
	}
}

// TestKeywordList checks keywords.txt: one word and a category (U, C, T or
// R) a line, lowercase, sorted, and the category pg_query's parser
// (PostgreSQL 17's kwlist.h) gives each word it knows. Words new in
// PostgreSQL 18 are listed apart.
func TestKeywordList(t *testing.T) {
	newIn18 := map[string]bool{"absent": true, "enforced": true, "objects": true, "period": true, "virtual": true}
	kinds := map[string]pg_query.KeywordKind{
		"U": pg_query.KeywordKind_UNRESERVED_KEYWORD,
		"C": pg_query.KeywordKind_COL_NAME_KEYWORD,
		"T": pg_query.KeywordKind_TYPE_FUNC_NAME_KEYWORD,
		"R": pg_query.KeywordKind_RESERVED_KEYWORD,
	}
	prev, n, quoted := "", 0, 0
	for _, line := range strings.Split(strings.TrimSpace(keywordList), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || kinds[f[1]] == 0 || f[0] != strings.ToLower(f[0]) || f[0] <= prev {
			t.Fatalf("bad line %q (after %q)", line, prev)
		}
		prev, n = f[0], n+1
		if f[1] != "U" {
			quoted++
			if got := QuoteIdentifier(f[0]); got != `"`+f[0]+`"` {
				t.Errorf("keyword %s (%s): QuoteIdentifier = %s", f[0], f[1], got)
			}
		} else if got := QuoteIdentifier(f[0]); got != f[0] {
			t.Errorf("unreserved keyword %s: QuoteIdentifier = %s", f[0], got)
		}
		res, err := pg_query.Scan(f[0])
		if err != nil || len(res.Tokens) != 1 {
			t.Fatalf("scan %q: %v %v", f[0], res, err)
		}
		if got := res.Tokens[0].KeywordKind; got != kinds[f[1]] && !(newIn18[f[0]] && got == pg_query.KeywordKind_NO_KEYWORD) {
			t.Errorf("keyword %s: category %s in keywords.txt, %s in pg_query", f[0], f[1], got)
		}
	}
	// PostgreSQL 18.6's pg_get_keywords(): 494 words, 164 of them quoted.
	if n != 494 || quoted != 164 {
		t.Errorf("%d keywords, %d quoted; want 494, 164", n, quoted)
	}
}

// TestTruncateIdentifier: 63 bytes at most, never half a character.
func TestTruncateIdentifier(t *testing.T) {
	long := strings.Repeat("x", 70)
	for _, tc := range []struct{ name, want string }{
		{"public", "public"},
		{long[:63], long[:63]},
		{long, long[:63]},
		{long[:62] + "ü", long[:62]}, // ü is 2 bytes: 64 in all
		{long[:61] + "ü", long[:61] + "ü"},
		{strings.Repeat("租", 30), strings.Repeat("租", 21)}, // 3 bytes each
	} {
		if got := TruncateIdentifier(tc.name); got != tc.want {
			t.Errorf("TruncateIdentifier(%q) = %q, want %q", tc.name, got, tc.want)
		}
	}
}
