package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// reportFailure writes a failed command's error on stderr: as text
// ("error: ..."), or, when the command's logs are JSON (--log-format json),
// as one JSON log record with the error's SQLSTATE and hint as fields, so
// that a log drain reads the failure like every other line.
func (a *app) reportFailure(stderr io.Writer, err error, usage bool) {
	if !a.jsonLogs && a.logFormat == "json" {
		// Failed before the logger was set up (cobra checks arguments
		// before PersistentPreRunE): --log-format json was parsed.
		a.logger = slog.New(slog.NewJSONHandler(stderr, nil))
		a.jsonLogs = true
	}
	if !a.jsonLogs {
		fmt.Fprintln(stderr, "error:", err)
		if usage {
			fmt.Fprintln(stderr, "Run 'pgtenant --help' or 'pgtenant COMMAND --help' for usage.")
		}
		return
	}
	attrs := []any{"error", err.Error()}
	if code := errorSQLState(err); code != "" {
		attrs = append(attrs, "sqlstate", code)
	}
	if hint := errorHint(err); hint != "" {
		attrs = append(attrs, "hint", hint)
	}
	exit := exitError
	if usage {
		exit = exitUsage
		attrs = append(attrs, "usage", "pgtenant COMMAND --help")
	}
	attrs = append(attrs, "exit", exit)
	a.logger.Error("command failed", attrs...)
}

// sqlstateInText finds the "(SQLSTATE xxxxx)" the commands' messages carry.
var sqlstateInText = regexp.MustCompile(`\(SQLSTATE ([0-9A-Z]{5})\)`)

// errorSQLState is err's SQLSTATE: a server's (*pgconn.PgError), an error
// type's SQLState method, else the first "(SQLSTATE xxxxx)" of its text;
// "" when it has none.
func errorSQLState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	var coded interface{ SQLState() string }
	if errors.As(err, &coded) && coded.SQLState() != "" {
		return coded.SQLState()
	}
	if m := sqlstateInText.FindStringSubmatch(err.Error()); m != nil {
		return m[1]
	}
	return ""
}

// errorHint is err's hint: a server's, else the text after the first
// "hint: " of its message.
func errorHint(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Hint != "" {
		return pe.Hint
	}
	s := err.Error()
	if i := strings.Index(s, "hint: "); i >= 0 {
		return strings.TrimSpace(s[i+len("hint: "):])
	}
	return ""
}

// progress writes one step of a long command on stderr: a timestamped line,
// or, with --log-format json, a JSON record at any log level (progress is
// what the user asked to see) with the step and attrs as fields.
func (a *app) progress(msg, step string, attrs ...any) {
	if !a.jsonLogs {
		fmt.Fprintf(a.stderr, "%s: %s\n", time.Now().Format("15:04:05.000"), step)
		return
	}
	slog.New(slog.NewJSONHandler(a.stderr, nil)).Info(msg, append([]any{"step", step}, attrs...)...)
}
