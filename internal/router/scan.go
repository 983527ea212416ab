package router

import "strings"

// The lexical pieces that the lexer (classify, on every statement) and guard
// (the full scan of flagged texts) both step over. Each takes the text and
// the index where the piece starts and returns the index just past it (the
// text's length when it is not closed).

// skipBlockComment steps over a /* ... */ comment starting at i; comments
// nest, as in PostgreSQL.
func skipBlockComment(s string, i int) int {
	n := len(s)
	depth := 1
	i += 2
	for i < n && depth > 0 {
		switch {
		case s[i] == '*' && i+1 < n && s[i+1] == '/':
			depth--
			i += 2
		case s[i] == '/' && i+1 < n && s[i+1] == '*':
			depth++
			i += 2
		default:
			i++
		}
	}
	return i
}

// skipString steps over a string literal starting at i: '...' with ”
// for a quote, or E'...' where a backslash escapes the next byte.
func skipString(s string, i int) int {
	n := len(s)
	esc := s[i] != '\''
	if esc {
		i++
	}
	i++
	for i < n {
		if esc && s[i] == '\\' {
			i += 2
			continue
		}
		if s[i] == '\'' {
			if i+1 < n && s[i+1] == '\'' {
				i += 2
				continue
			}
			i++
			break
		}
		i++
	}
	return min(i, n)
}

// skipQuotedIdent steps over a "quoted identifier" starting at i, with ""
// for a quote.
func skipQuotedIdent(s string, i int) int {
	n := len(s)
	i++
	for i < n {
		if s[i] == '"' {
			if i+1 < n && s[i+1] == '"' {
				i += 2
				continue
			}
			i++
			break
		}
		i++
	}
	return i
}

// scanDollar reads what starts with the '$' at i: a parameter $N (tParam),
// a dollar-quoted string $tag$...$tag$ (tString), or a lone '$' (kind 0,
// end i+1).
func scanDollar(s string, i int) (end int, kind tokKind) {
	n := len(s)
	j := i + 1
	if j < n && s[j] >= '0' && s[j] <= '9' {
		for j < n && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		return j, tParam
	}
	for j < n && s[j] != '$' && isIdent(s[j]) {
		j++
	}
	if j < n && s[j] == '$' {
		tag := s[i : j+1]
		if k := strings.Index(s[j+1:], tag); k >= 0 {
			return j + 1 + k + len(tag), tString
		}
		return n, tString
	}
	return i + 1, 0
}
