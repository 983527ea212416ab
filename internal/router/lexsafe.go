package router

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// Every check the router makes on a statement text (classify, guard,
// accessCheck, the tenant hints) reads it as PostgreSQL does with
// standard_conforming_strings on and a client encoding in which every byte
// below 0x80 is an ASCII character. Two settings would make the server read
// the same bytes otherwise, so that a statement hidden inside what the router
// takes for a string literal runs on the server (SET ROLE of the node's
// owner, by a user restricted to a tenant):
//
//   - standard_conforming_strings off: a backslash escapes the quote that
//     ends a '...' literal;
//   - a client encoding such as SJIS, BIG5, GBK, UHC, GB18030 or JOHAB,
//     whose multibyte characters may end with the byte of a backslash: the
//     server converts the text first, and the backslash the router sees in
//     an E'...' literal is part of a character there.
//
// The router refuses both wherever a client can ask for them (startup
// parameters, SET, set_config), and ends a session whose backend reports
// either (ParameterStatus) all the same, for instance after a function that
// called set_config.

// lexSetting reports whether name (lower case, as SET names it) is a setting
// that changes how the server reads a statement text.
func lexSetting(name string) bool {
	switch name {
	case "standard_conforming_strings", "client_encoding", "names":
		return true
	}
	return false
}

// lexValueOK reports whether v is a value of the lexSetting name under which
// the server reads statement text as the router does.
func lexValueOK(name, v string) bool {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "default" {
		return true
	}
	if name == "standard_conforming_strings" {
		switch v {
		case "on", "true", "yes", "1", "t", "tr", "tru", "y", "ye":
			return true
		}
		return false
	}
	return safeEncoding(v)
}

// safeEncoding reports whether enc names (in any of PostgreSQL's spellings:
// case and punctuation are ignored, as the server does) an encoding whose
// multibyte characters contain no ASCII bytes: the server encodings and
// their aliases. The client-only encodings (SJIS, BIG5, GBK, UHC, GB18030,
// JOHAB, SHIFT_JIS_2004 and their WIN93x aliases) are not.
func safeEncoding(enc string) bool {
	switch n := encodingKey(enc); n {
	case "utf8", "unicode", "sqlascii", "muleinternal",
		"euccn", "eucjp", "eucjis2004", "euckr", "euctw",
		"koi8", "koi8r", "koi8u", "alt", "abc", "tcvn", "tcvn5712", "vscii", "win",
		"win866", "win874", "windows866", "windows874":
		return true
	default:
		for _, p := range []string{"latin", "iso8859", "win125", "windows125"} {
			if rest, ok := strings.CutPrefix(n, p); ok && rest != "" && strings.Trim(rest, "0123456789") == "" {
				return true
			}
		}
	}
	return false
}

// encodingKey is enc as PostgreSQL compares encoding names: lower case,
// letters and digits only.
func encodingKey(enc string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(enc) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// unsafeEncoding reports whether enc names one of the client-only
// encodings safeEncoding refuses (PostgreSQL's encnames.c).
func unsafeEncoding(enc string) bool {
	switch encodingKey(enc) {
	case "big5", "gb18030", "gbk", "johab", "mskanji", "shiftjis", "shiftjis2004", "sjis", "uhc",
		"win932", "win936", "win949", "win950", "windows932", "windows936", "windows949", "windows950":
		return true
	}
	return false
}

// encodingError is what a client asking for client_encoding v gets when v
// is refused: the server's own error when v names no encoding at all
// (22023), else the router's refusal of an encoding it cannot read
// statements in (0A000).
func encodingError(v string) *wire.Error {
	if !safeEncoding(v) && !unsafeEncoding(v) {
		return &wire.Error{Code: "22023", Message: `invalid value for parameter "client_encoding": "` + v + `"`}
	}
	return lexSettingError("client_encoding", v)
}

// lexSettingError refuses a value of a lexSetting that the router cannot
// read statements under.
func lexSettingError(name, v string) *wire.Error {
	if name == "standard_conforming_strings" {
		return &wire.Error{Code: "0A000", Message: fmt.Sprintf("standard_conforming_strings = %q is not supported through pgtenant", v),
			Hint: "The router reads statements with standard_conforming_strings on, as PostgreSQL does by default; write backslash escapes in E'...' strings."}
	}
	return &wire.Error{Code: "0A000", Message: fmt.Sprintf("client_encoding %q is not supported through pgtenant", v),
		Hint: "Use client_encoding UTF8 (or another server encoding); in SJIS, BIG5, GBK, UHC, GB18030 and JOHAB a character may end with the byte of a backslash, which the router cannot tell apart from one."}
}

// setValue returns the value a SET statement gives its setting, the
// statement's tokens after SET starting at toks[i]: what follows = or TO
// (or, for SET NAMES, the setting), up to the end of the statement, as one
// string when it is a single word, number or literal; ok is false for
// anything else (a list, an expression).
func setValue(toks []gtok, i int) (v string, ok bool) {
	j := i
	for ; j < len(toks) && j < i+8; j++ {
		t := toks[j]
		if (t.kind == tPunct && t.text == "=") || (t.kind == tWord && strings.EqualFold(t.text, "to")) {
			j++
			break
		}
		if t.kind == tWord && strings.EqualFold(t.text, "names") {
			j++
			break
		}
	}
	if j >= len(toks) {
		return "", false
	}
	end := j + 1
	if end < len(toks) && !(toks[end].kind == tPunct && toks[end].text == ";") {
		return "", false
	}
	switch t := toks[j]; t.kind {
	case tWord, tNumber:
		return t.text, true
	case tQuotedIdent:
		return identText(t), true
	case tString:
		vals := literalValues(t.text)
		if len(vals) == 1 {
			return vals[0], true
		}
		// Read both ways (see literalValues): ok when they agree.
		if vals[0] == vals[1] {
			return vals[0], true
		}
	}
	return "", false
}

// checkLexSet checks SET of a lexSetting (toks after SET at i).
func checkLexSet(name string, toks []gtok, i int) *wire.Error {
	if name == "names" {
		name = "client_encoding"
	}
	v, ok := setValue(toks, i)
	if !ok || !lexValueOK(name, v) {
		if !ok {
			v = "(an expression)"
		} else if name == "client_encoding" {
			return encodingError(v)
		}
		return lexSettingError(name, v)
	}
	return nil
}

// lexParamStatus checks a ParameterStatus the backend sent: nil, or the
// error that ends the session because the server now reads statement text
// otherwise than the router does.
func lexParamStatus(body []byte) *wire.Error {
	i := bytes.IndexByte(body, 0)
	if i < 0 || !lexSetting(string(body[:i])) {
		return nil // (no copy of the body: PostgreSQL 18 reports search_path at every change)
	}
	name := string(body[:i])
	v, _, _ := strings.Cut(string(body[i+1:]), "\x00")
	if lexValueOK(name, v) {
		return nil
	}
	e := lexSettingError(name, v)
	e.Severity = "FATAL"
	return e
}

// paramStatusHidden reports whether a ParameterStatus the backend sent is
// of search_path, which PostgreSQL 18 reports to clients (GUC_REPORT) on
// every change: the router's shard path, set and reverted with every
// transaction, is not the client's to see unless the client set its own
// (session mode, ownsPath). Before 18 clients never saw it either.
func paramStatusHidden(body []byte) bool {
	return len(body) > len("search_path") && string(body[:len("search_path")+1]) == "search_path\x00"
}

// paramStatusRole reports whether a ParameterStatus body reports a change of
// role: is_superuser or session_authorization (PostgreSQL reports no other
// sign of SET ROLE).
func paramStatusRole(body []byte) bool {
	name, _, _ := strings.Cut(string(body), "\x00")
	return name == "is_superuser" || name == "session_authorization"
}

// paramStatusValue is the value a ParameterStatus body reports.
func paramStatusValue(body []byte) string {
	_, v, _ := strings.Cut(string(body), "\x00")
	v, _, _ = strings.Cut(v, "\x00")
	return v
}
