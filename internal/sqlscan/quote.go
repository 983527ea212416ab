package sqlscan

import (
	_ "embed"
	"strings"
	"sync"
	"unicode/utf8"
)

// keywordList is PostgreSQL's keyword list with each word's category (see
// the file's header).
//
//go:embed keywords.txt
var keywordList string

// quotedKeywords holds the keywords that quote_identifier quotes: all but
// the unreserved ones. Built once from keywordList.
var quotedKeywords = sync.OnceValue(func() map[string]bool {
	m := make(map[string]bool, 200)
	for _, line := range strings.Split(keywordList, "\n") {
		word, cat, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || strings.HasPrefix(word, "#") {
			continue
		}
		if cat != "U" {
			m[word] = true
		}
	}
	return m
})

// QuoteIdentifier spells name as PostgreSQL's quote_identifier does (and
// so as the server stores an identifier in a list setting such as
// search_path after SET): bare when it is lowercase ASCII letters, digits
// and underscores, does not start with a digit and is not a keyword other
// than an unreserved one; otherwise in double quotes, with double quotes
// inside doubled. The keywords are PostgreSQL 18's (keywords.txt): an older
// server leaves bare the few words it does not know as keywords. The
// server's quote_all_identifiers setting is not followed.
//
// pgx.Identifier.Sanitize always quotes, which PostgreSQL reads the same
// way but spells back differently.
func QuoteIdentifier(name string) string {
	if safeIdentifier(name) {
		return name
	}
	var b strings.Builder
	b.Grow(len(name) + 2)
	b.WriteByte('"')
	for i := 0; i < len(name); i++ {
		if name[i] == '"' {
			b.WriteByte('"')
		}
		b.WriteByte(name[i])
	}
	b.WriteByte('"')
	return b.String()
}

// safeIdentifier reports whether quote_identifier leaves name bare.
func safeIdentifier(name string) bool {
	if name == "" {
		return false
	}
	if c := name[0]; !(c >= 'a' && c <= 'z' || c == '_') {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return !quotedKeywords()[name]
}

// maxIdentifierBytes is the longest identifier PostgreSQL keeps
// (NAMEDATALEN - 1 with the default build).
const maxIdentifierBytes = 63

// TruncateIdentifier clips name as PostgreSQL clips a longer identifier
// it reads (truncate_identifier): to 63 bytes, not splitting a UTF-8
// character. A schema created with a longer name has the clipped one.
func TruncateIdentifier(name string) string {
	if len(name) <= maxIdentifierBytes {
		return name
	}
	n := maxIdentifierBytes
	for n > 0 && !utf8.RuneStart(name[n]) {
		n--
	}
	return name[:n]
}
