package importer

import (
	"errors"
	"strings"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// Errors an operator reads. Every error of the importer that reaches the
// CLI carries a SQLSTATE (a SQLState method, its text saying "(SQLSTATE
// 55000)" after its first clause, as every other command's errors do: see
// withSQLState): the sentinels below are codedErrors, the typed errors
// (CheckError, RejectsError, UnimportedError, UnregisteredTenantError,
// IDCollisionError, PositionMovedError) say theirs. Callers branch with
// errors.Is/As, never on the text.

// codedError is a sentinel with a SQLSTATE.
type codedError struct{ code, msg string }

func coded(code, msg string) error { return &codedError{code: code, msg: msg} }

func (e *codedError) Error() string { return withSQLState(e.code, e.msg) }

// withSQLState puts "(SQLSTATE code)" in msg where the other commands put
// it ("node \"x\" is unknown (SQLSTATE 42704); `pgtenant node list` names
// the nodes"): after its first clause, before the first "; ", ": " or line
// break outside parentheses, brackets and double quotes, or at its end.
func withSQLState(code, msg string) string {
	depth, quoted := 0, false
	for i := 0; i < len(msg); i++ {
		switch c := msg[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case quoted:
		case c == '(' || c == '[':
			depth++
		case (c == ')' || c == ']') && depth > 0:
			depth--
		case depth > 0:
		case c == '\n', (c == ';' || c == ':') && i+1 < len(msg) && msg[i+1] == ' ':
			return msg[:i] + sqlstate(code) + msg[i:]
		}
	}
	return msg + sqlstate(code)
}

// sqlstate is " (SQLSTATE code)", for the end of a line.
func sqlstate(code string) string { return " (SQLSTATE " + code + ")" }

// SQLState is the error's SQLSTATE.
func (e *codedError) SQLState() string { return e.code }

// PositionMovedError: a change stream's apply transaction on a node found
// the node's recorded position moved by another applier (a second stream
// of the import, or one killed while its transaction waited for a lock
// and committed after the new one started: stream.ErrPositionMoved). The
// transaction rolled back and the stream stopped; nothing is applied twice
// or lost, and a new import start resumes at the node's position.
type PositionMovedError struct{ Err error }

func (e *PositionMovedError) Error() string {
	inner := strings.Replace(e.Err.Error(), stream.ErrPositionMoved.Error(), "position moved", 1)
	return withSQLState("40001", "another change stream applied to a node first (a second `pgtenant import start` or `import follow` of this import, "+
		"or one killed while its transaction waited for a lock); this one stopped, its last transaction rolled back: nothing is applied twice or lost ("+inner+")") +
		"\n  hint: let one import start run (import status says streaming: true while one does); if none runs, run import start again: it resumes at each node's recorded position"
}

// SQLState is 40001 (serialization_failure: another transaction won; run again).
func (e *PositionMovedError) SQLState() string { return "40001" }

// Unwrap gives the stream's error (stream.ErrPositionMoved).
func (e *PositionMovedError) Unwrap() error { return e.Err }

// Explain gives the errors of the packages the importer drives a SQLSTATE
// and a hint in the importer's terms (stream.ErrPositionMoved becomes a
// PositionMovedError); other errors are returned as they are.
func Explain(err error) error {
	if err == nil {
		return nil
	}
	var pm *PositionMovedError
	if errors.Is(err, stream.ErrPositionMoved) && !errors.As(err, &pm) {
		return &PositionMovedError{Err: err}
	}
	return err
}
