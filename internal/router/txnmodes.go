package router

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// checkTxnStart checks, as PostgreSQL's grammar does, a BEGIN, START
// TRANSACTION or SET TRANSACTION statement the router defers instead of
// sending at once, and returns the syntax error the server would give
// (42601, with its position), or nil. A deferred statement that the server
// refused only later would leave the client's next statements running
// outside any transaction.
//
//	BEGIN [WORK | TRANSACTION] [mode [[,] mode] ...]
//	START TRANSACTION [mode [[,] mode] ...]
//	SET [LOCAL | SESSION] TRANSACTION mode [[,] mode] ...
//	SET TRANSACTION SNAPSHOT 'id'
//	mode: ISOLATION LEVEL {SERIALIZABLE | REPEATABLE READ | READ COMMITTED | READ UNCOMMITTED}
//	      | READ WRITE | READ ONLY | [NOT] DEFERRABLE
//
// Anything after a ';' is not looked at (the router defers only single
// statements).
func checkTxnStart(sql string) *wire.Error {
	p := txnParser{s: sql}
	p.next()
	switch {
	case p.kw("begin"):
		p.next()
		if p.kw("work") || p.kw("transaction") {
			p.next()
		}
		p.modes(false)
	case p.kw("start"):
		p.next()
		if !p.expect("transaction") {
			break
		}
		p.modes(false)
	case p.kw("set"):
		p.next()
		if p.kw("local") || p.kw("session") {
			p.next()
		}
		if !p.expect("transaction") {
			break
		}
		if p.kw("snapshot") {
			p.next()
			if p.tok != "'" {
				p.fail()
				break
			}
			p.next()
			break
		}
		p.modes(true)
	default:
		return nil // not one of ours
	}
	if p.err == nil && p.tok != "" && p.tok != ";" {
		p.fail()
	}
	return p.err
}

// txnParser walks tokens of a transaction statement. tok is the current
// token's class: a lowercase keyword, "'" for a string, "" at the end, or
// the character itself; text is its text and pos its byte offset.
type txnParser struct {
	s         string
	i         int
	tok, text string
	pos       int
	err       *wire.Error
}

func (p *txnParser) kw(w string) bool { return p.tok == w }

// expect consumes keyword w or fails.
func (p *txnParser) expect(w string) bool {
	if p.err != nil {
		return false
	}
	if p.tok != w {
		p.fail()
		return false
	}
	p.next()
	return true
}

// modes parses a transaction mode list; an empty one only if !needOne.
func (p *txnParser) modes(needOne bool) {
	first := true
	for p.err == nil {
		if p.tok == "," && !first {
			p.next()
		} else if p.tok == "" || p.tok == ";" {
			if first && needOne {
				p.fail()
			}
			return
		}
		switch {
		case p.kw("isolation"):
			p.next()
			if !p.expect("level") {
				return
			}
			switch {
			case p.kw("serializable"):
				p.next()
			case p.kw("repeatable"):
				p.next()
				p.expect("read")
			case p.kw("read"):
				p.next()
				if p.kw("committed") || p.kw("uncommitted") {
					p.next()
				} else {
					p.fail()
				}
			default:
				p.fail()
			}
		case p.kw("read"):
			p.next()
			if p.kw("only") || p.kw("write") {
				p.next()
			} else {
				p.fail()
			}
		case p.kw("deferrable"):
			p.next()
		case p.kw("not"):
			p.next()
			p.expect("deferrable")
		default:
			p.fail()
		}
		first = false
	}
}

// fail records the syntax error at the current token, worded and placed as
// PostgreSQL's parser does (the position counts characters from 1).
func (p *txnParser) fail() {
	if p.err != nil {
		return
	}
	e := &wire.Error{Code: "42601"}
	if p.tok == "" {
		e.Message = "syntax error at end of input"
		e.Position = strconv.Itoa(utf8.RuneCountInString(p.s) + 1)
	} else {
		e.Message = "syntax error at or near \"" + p.text + "\""
		e.Position = strconv.Itoa(utf8.RuneCountInString(p.s[:p.pos]) + 1)
	}
	p.err = e
}

// next moves to the next token, skipping white space and comments.
func (p *txnParser) next() {
	s := p.s
	for p.i < len(s) {
		c := s[p.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			p.i++
			continue
		case c == '-' && strings.HasPrefix(s[p.i:], "--"):
			if j := strings.IndexAny(s[p.i:], "\r\n"); j >= 0 { // a -- comment ends at either
				p.i += j + 1
			} else {
				p.i = len(s)
			}
			continue
		case c == '/' && strings.HasPrefix(s[p.i:], "/*"):
			depth, j := 0, p.i
			for j < len(s) {
				if strings.HasPrefix(s[j:], "/*") {
					depth++
					j += 2
				} else if strings.HasPrefix(s[j:], "*/") {
					depth--
					j += 2
					if depth == 0 {
						break
					}
				} else {
					j++
				}
			}
			p.i = j
			continue
		}
		break
	}
	p.pos = p.i
	if p.i >= len(s) {
		p.tok, p.text = "", ""
		return
	}
	c := s[p.i]
	switch {
	case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
		j := p.i + 1
		for j < len(s) && (s[j] == '_' || s[j] == '$' || s[j] >= 'a' && s[j] <= 'z' || s[j] >= 'A' && s[j] <= 'Z' || s[j] >= '0' && s[j] <= '9' || s[j] >= 0x80) {
			j++
		}
		p.text = s[p.i:j]
		p.tok = strings.ToLower(p.text)
		p.i = j
	case c == '\'' || c == '"':
		j := p.i + 1
		for j < len(s) {
			if s[j] == c {
				if j+1 < len(s) && s[j+1] == c {
					j += 2
					continue
				}
				j++
				break
			}
			j++
		}
		p.text = s[p.i:j]
		p.tok = string(c)
		if c == '"' {
			p.tok = "\x00ident" // a quoted identifier is never a keyword
		}
		p.i = j
	case c >= '0' && c <= '9':
		j := p.i + 1
		for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
			j++
		}
		p.text, p.tok = s[p.i:j], "\x00number"
		p.i = j
	default:
		p.text, p.tok = s[p.i:p.i+1], s[p.i:p.i+1]
		p.i++
	}
}

// deallocateTarget reads DEALLOCATE [PREPARE] {name | ALL}: the statement
// name as the server would fold it, or all; ok is false for anything else.
func deallocateTarget(sql string) (name string, all, ok bool) {
	p := txnParser{s: sql}
	p.next()
	if !p.kw("deallocate") {
		return "", false, false
	}
	p.next()
	if p.kw("prepare") {
		p.next()
	}
	switch {
	case p.tok == "\x00ident":
		name = strings.ReplaceAll(p.text[1:len(p.text)-1], `""`, `"`)
	case p.kw("all"):
		all = true
	case p.tok != "" && (p.tok[0] == '_' || p.tok[0] >= 'a' && p.tok[0] <= 'z' || p.tok[0] >= 0x80):
		name = p.tok
	default:
		return "", false, false
	}
	p.next()
	if p.tok != "" && p.tok != ";" {
		return "", false, false
	}
	p.next()
	return name, all, p.tok == ""
}
