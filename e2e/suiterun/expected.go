package suiterun

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Entry is one line of an expected-failure list.
type Entry struct {
	Line        int // 1-based
	Key, Reason string
}

// ReadEntries reads an expected-failure list: one entry per line, a key
// (what the runner names a test by) then sep and the reason (the last sep
// on the line ends the key); blank lines and lines starting with # are
// comments. An entry without a reason is an error.
func ReadEntries(path, sep string) ([]Entry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read expected failures: %w", err)
	}
	var es []Entry
	for i, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		j := strings.LastIndex(line, sep)
		if j < 0 || strings.TrimSpace(line[j+len(sep):]) == "" {
			return nil, fmt.Errorf("%s:%d: each entry needs %q and a reason", path, i+1, sep)
		}
		es = append(es, Entry{Line: i + 1, Key: strings.TrimSpace(line[:j]), Reason: strings.TrimSpace(line[j+len(sep):])})
	}
	return es, nil
}

// Expected is one mode's expected-failure list.
type Expected struct {
	Path    string
	Reasons map[string]string // key -> reason
}

// ReadExpected reads the expected-failure list at path (see ReadEntries);
// a key listed twice is an error.
func ReadExpected(path, sep string) (*Expected, error) {
	es, err := ReadEntries(path, sep)
	if err != nil {
		return nil, err
	}
	e := NewExpected(path)
	for _, en := range es {
		if err := e.Add(en); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// ReadLists reads each mode's list, dir/expected-MODE.txt (see
// ReadExpected).
func ReadLists(dir, sep string, modes []string) (map[string]*Expected, error) {
	lists := map[string]*Expected{}
	for _, m := range modes {
		e, err := ReadExpected(filepath.Join(dir, "expected-"+m+".txt"), sep)
		if err != nil {
			return nil, err
		}
		lists[m] = e
	}
	return lists, nil
}

// NewExpected returns an empty list read from path, for Add.
func NewExpected(path string) *Expected {
	return &Expected{Path: path, Reasons: map[string]string{}}
}

// Add puts en on the list; a key listed twice is an error.
func (e *Expected) Add(en Entry) error {
	if _, dup := e.Reasons[en.Key]; dup {
		return fmt.Errorf("%s:%d: %q is listed twice", e.Path, en.Line, en.Key)
	}
	e.Reasons[en.Key] = en.Reason
	return nil
}

// Has reports whether key is on the list.
func (e *Expected) Has(key string) bool {
	_, ok := e.Reasons[key]
	return ok
}

// PrintPassed prints each listed key among passed, sorted, as
// "label: listed but passed: KEY", so that the list can be trimmed.
func (e *Expected) PrintPassed(out io.Writer, label string, passed []string) {
	var ks []string
	for _, k := range passed {
		if e.Has(k) {
			ks = append(ks, k)
		}
	}
	slices.Sort(ks)
	for _, k := range slices.Compact(ks) {
		fmt.Fprintf(out, "%s: listed but passed: %s\n", label, k)
	}
}

// ErrProblems reports that a run found problems (printed already).
var ErrProblems = errors.New("see the FAIL lines above")

// Finish prints each of a run's problems as "FAIL: problem" and returns an
// error wrapping ErrProblems, or prints ok when there are none.
func Finish(out io.Writer, problems []string, ok string) error {
	if len(problems) == 0 {
		fmt.Fprintln(out, ok)
		return nil
	}
	for _, p := range problems {
		fmt.Fprintln(out, "FAIL:", p)
	}
	return fmt.Errorf("%d problems: %w", len(problems), ErrProblems)
}
