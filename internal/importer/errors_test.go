package importer

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// TestErrorsHaveSQLState: every importer error that reaches the CLI says
// its SQLSTATE (a SQLState method and its text starting with the code),
// wrapped as the importer returns it; errors.Is still finds the sentinel.
// The change stream's stream.ErrPositionMoved had only a code inside the
// text and a hint for a generic stream (issue 12): Explain makes it a
// PositionMovedError (40001) with what the operator of an import does.
func TestErrorsHaveSQLState(t *testing.T) {
	type coder interface{ SQLState() string }
	moved := fmt.Errorf("import follow: apply to node n1: apply changes up to 0/16B3 as %s: %w", positionName, stream.ErrPositionMoved)
	for _, tc := range []struct {
		err      error
		sentinel error
		code     string
	}{
		{ErrNoImport, ErrNoImport, "42704"},
		{fmt.Errorf("import finish: 2 shard(s): %w", ErrNotCutOver), ErrNotCutOver, "55000"},
		{ErrMarkerTimeout, ErrMarkerTimeout, "55000"},
		{fmt.Errorf("%w (waited 10s)", ErrStreamBehind), ErrStreamBehind, "55000"},
		{ErrVerifyNoStream, ErrVerifyNoStream, "55000"},
		{ErrVerifyHoldLapsed, ErrVerifyHoldLapsed, "57014"},
		{fmt.Errorf("a.sql: %w", ErrFileExists), ErrFileExists, "58P02"},
		{fmt.Errorf("import rollback: shard 3: %w", ErrNoReverse), ErrNoReverse, "55000"},
		{ErrTenantChange, ErrTenantChange, "0A000"},
		{&RejectsError{Op: "import finish"}, ErrRejects, "55000"},
		{&UnimportedError{Op: "import finish", Tables: []string{"late"}}, ErrUnimported, "55000"},
		{Explain(moved), stream.ErrPositionMoved, "40001"},
	} {
		var c coder
		if !errors.As(tc.err, &c) || c.SQLState() != tc.code {
			t.Errorf("%v: no SQLSTATE %s", tc.err, tc.code)
		}
		if !errors.Is(tc.err, tc.sentinel) {
			t.Errorf("%v: errors.Is does not find %v", tc.err, tc.sentinel)
		}
		// As every other command says it (issue: "42704: no import is
		// registered" against "node \"x\" is unknown (SQLSTATE 42704)").
		if msg := tc.err.Error(); !strings.Contains(msg, "(SQLSTATE "+tc.code+")") || strings.Contains(msg, tc.code+": ") || strings.Count(msg, tc.code) != 1 {
			t.Errorf("%v: the text does not say (SQLSTATE %s) once, as the other commands do", tc.err, tc.code)
		}
	}
	if got, want := ErrNoImport.Error(), "no import is registered (SQLSTATE 42704); start one with `pgtenant import init --from DSN`"; got != want {
		t.Errorf("ErrNoImport says %q, want %q", got, want)
	}
	msg := Explain(moved).Error()
	for _, want := range []string{"another change stream applied to a node first (a second", "waited for a lock) (SQLSTATE 40001); this one stopped", "node n1", "run import start again", "nothing is applied twice or lost"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the position-moved error does not say %q:\n%s", want, msg)
		}
	}
	if strings.Count(msg, "40001") != 1 {
		t.Errorf("the position-moved error repeats its code:\n%s", msg)
	}
	if err := Explain(Explain(moved)); err.Error() != msg {
		t.Errorf("Explain twice: %v", err)
	}
}

// TestWithSQLState: the code goes after the first clause, never inside
// parentheses or a quoted name, nor after a clause that is not the first.
func TestWithSQLState(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{"an update changed a row's tenant", "an update changed a row's tenant (SQLSTATE 0A000)"},
		{"no import; start one", "no import (SQLSTATE 0A000); start one"},
		{"not created in time: a slot waits", "not created in time (SQLSTATE 0A000): a slot waits"},
		{"gave up (on every attempt: long transactions); end them", "gave up (on every attempt: long transactions) (SQLSTATE 0A000); end them"},
		{`tenant "a; b" is not registered; register it`, `tenant "a; b" is not registered (SQLSTATE 0A000); register it`},
		{`tenant "a\"; b" is not registered`, `tenant "a\"; b" is not registered (SQLSTATE 0A000)`},
		{"slots short (nothing was changed)\n  n1: 2 free", "slots short (nothing was changed) (SQLSTATE 0A000)\n  n1: 2 free"},
		{"key(s) [a: b] unmatched", "key(s) [a: b] unmatched (SQLSTATE 0A000)"},
	} {
		if got := withSQLState("0A000", tc.msg); got != tc.want {
			t.Errorf("withSQLState(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
	typed := []error{
		&CheckError{Problems: []Problem{{Code: "42P01", Message: "table t: not registered; register it", Hint: "pgtenant table set t"}}},
		&UnregisteredTenantError{Table: "t", Tenant: "x; y"},
	}
	for i, want := range []string{"\n  table t: not registered; register it (SQLSTATE 42P01)\n    hint: pgtenant table set t", `tenant "x; y", which is not registered (SQLSTATE 23503); the change stream stopped`} {
		if got := typed[i].Error(); !strings.Contains(got, want) {
			t.Errorf("%T says %q, want it to contain %q", typed[i], got, want)
		}
	}
}
