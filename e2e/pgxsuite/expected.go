package main

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// expectations is one mode's expected-failure list.
type expectations struct {
	fail *suiterun.Expected  // "package TestName" -> reason
	skip map[string][]string // package -> top-level tests not run
	// ownPath: package -> top-level tests that run, not in the main pass,
	// but in a pass of their own whose connections set the client's own
	// search_path (ownPathDSN), and must pass there.
	ownPath map[string][]string
}

// ownPathDSN is what the own-path pass adds to each test's connection
// string: the search_path a client that wants PostgreSQL's default path
// sets, which a router in session pool mode honours.
const ownPathDSN = "&search_path=public"

// readExpected reads an expected-failure list: one "package TestName"
// per line (package relative to the pgx module, "." for its root), then
// " # reason"; "skip package TestName # reason" for a test that is not
// run at all (it hangs or waits out a long timeout through the router);
// "own-path package TestName # reason" for a test that runs in the
// own-path pass instead of the main one (see expectations.ownPath); blank
// lines and lines starting with # are comments.
func readExpected(path string) (*expectations, error) {
	entries, err := suiterun.ReadEntries(path, " # ")
	if err != nil {
		return nil, err
	}
	e := &expectations{fail: suiterun.NewExpected(path), skip: map[string][]string{}, ownPath: map[string][]string{}}
	for _, en := range entries {
		k := en.Key
		for _, kind := range []string{"skip", "own-path"} {
			rest, ok := strings.CutPrefix(k, kind+" ")
			if !ok {
				continue
			}
			pkg, name, ok := strings.Cut(rest, " ")
			if !ok || strings.Contains(name, "/") || !regexp.MustCompile(`^Test\w*$`).MatchString(name) {
				return nil, fmt.Errorf("%s:%d: a %s entry is \"%s PACKAGE TestName # reason\" (a top-level test)", path, en.Line, kind, kind)
			}
			if kind == "skip" {
				e.skip[pkg] = append(e.skip[pkg], name)
			} else {
				e.ownPath[pkg] = append(e.ownPath[pkg], name)
			}
			k = ""
		}
		if k == "" {
			continue
		}
		if err := e.fail.Add(en); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// skipPattern is the main pass's -test.skip pattern for pkg: its skipped
// tests and those of the own-path pass; "" for none.
func (e *expectations) skipPattern(pkg string) string {
	names := append(append([]string(nil), e.skip[pkg]...), e.ownPath[pkg]...)
	if len(names) == 0 {
		return ""
	}
	return "^(" + strings.Join(names, "|") + ")$"
}

// covers reports whether the failure of test k is expected: k or one of
// its parents is listed, or k failed only because listed subtests failed.
func (e *expectations) covers(k string, failed map[string]*result) bool {
	return e.listed(k) || e.childrenExpected(k, failed)
}

// listed reports whether test k or one of its parents is on the list.
func (e *expectations) listed(k string) bool {
	sp := strings.IndexByte(k, ' ')
	for {
		if e.fail.Has(k) {
			return true
		}
		i := strings.LastIndexByte(k, '/')
		if i < sp {
			return false
		}
		k = k[:i]
	}
}

// childrenExpected reports whether k failed only because listed subtests failed.
func (e *expectations) childrenExpected(k string, failed map[string]*result) bool {
	any := false
	for c := range failed {
		if strings.HasPrefix(c, k+"/") {
			if !e.listed(c) && !e.childrenExpected(c, failed) {
				return false
			}
			any = true
		}
	}
	return any
}
