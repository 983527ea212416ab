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
		if !strings.Contains(tc.err.Error(), tc.code+": ") {
			t.Errorf("%v: the text does not say %s", tc.err, tc.code)
		}
	}
	msg := Explain(moved).Error()
	for _, want := range []string{"40001: another change stream applied to a node first", "node n1", "run import start again", "nothing is applied twice or lost"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the position-moved error does not say %q:\n%s", want, msg)
		}
	}
	if strings.HasPrefix(msg, "40001") && strings.Count(msg, "40001") != 1 {
		t.Errorf("the position-moved error repeats its code:\n%s", msg)
	}
	if err := Explain(Explain(moved)); err.Error() != msg {
		t.Errorf("Explain twice: %v", err)
	}
}
