package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// example is one rspec example of the JSON formatter's report.
type example struct {
	FullDescription string `json:"full_description"`
	Status          string `json:"status"` // passed, failed, pending
	FilePath        string `json:"file_path"`
	LineNumber      int    `json:"line_number"`
	Exception       *struct {
		Class   string `json:"class"`
		Message string `json:"message"`
	} `json:"exception"`
}

// rspecReport is the JSON formatter's report.
type rspecReport struct {
	Examples []example `json:"examples"`
	Summary  struct {
		ExampleCount int `json:"example_count"`
		FailureCount int `json:"failure_count"`
		PendingCount int `json:"pending_count"`
	} `json:"summary"`
}

// runSpecs runs rspec once for mode against port (the node's or a
// router's) and reads its JSON report.
func runSpecs(ctx context.Context, o *options, src, override, jsonPath, logPath string, cl *suiteCluster, mode string, port int) (*rspecReport, error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	args := []string{"--require", override, "--seed", strconv.Itoa(o.seed),
		"--format", "json", "--out", jsonPath, "--format", "progress"}
	if o.example != "" {
		args = append(args, "-e", o.example)
	}
	args = append(args, o.specs...)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	os.Remove(jsonPath)
	c := exec.CommandContext(ctx, o.rspec, args...)
	c.Dir = src
	c.Stdout, c.Stderr = logf, logf
	// The PG* variables of the caller's environment are left out: the
	// specs' connections must reach the given port only.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			c.Env = append(c.Env, kv)
		}
	}
	c.Env = append(c.Env,
		"RUBYPG_SUITE_SRC="+src, "RUBYPG_SUITE_PORT="+strconv.Itoa(port), "RUBYPG_SUITE_TLS="+cl.tlsDir,
		"PGHOST=localhost", "PGPORT="+strconv.Itoa(port), "PGUSER=postgres", "PGDATABASE=test")
	if mode != "direct" {
		// libpq sends PGOPTIONS unless the connection string has options.
		c.Env = append(c.Env, "PGOPTIONS=-c pgtenant.tenant="+cl.tenants[mode])
	}
	c.WaitDelay = 10 * time.Second
	runErr := c.Run()
	b, err := os.ReadFile(jsonPath)
	if err != nil || len(b) == 0 {
		return nil, fmt.Errorf("rspec gave no report (%v; output in %s): %w", runErr, logPath, errors.Join(err, ctx.Err()))
	}
	var r rspecReport
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("read rspec's report %s: %w", jsonPath, err)
	}
	return &r, nil
}

// report prints a mode's counts, its unexpected failures with their
// messages and the listed examples that passed, and returns the
// unexpected failures.
func report(out io.Writer, mode string, r *rspecReport, e *suiterun.Expected, took time.Duration) []string {
	passed, failed, pending := 0, 0, 0
	var problems, ok []string
	for _, ex := range r.Examples {
		// Some descriptions end with a space, which a list's line loses.
		ex.FullDescription = strings.TrimSpace(ex.FullDescription)
		switch ex.Status {
		case "passed":
			passed++
			ok = append(ok, ex.FullDescription)
		case "failed":
			failed++
			if e.Has(ex.FullDescription) {
				continue
			}
			msg := ""
			if ex.Exception != nil {
				msg = ex.Exception.Class + ": " + ex.Exception.Message
			}
			if len(msg) > 300 {
				msg = msg[:300] + "…"
			}
			problems = append(problems, fmt.Sprintf("%s: %s (%s:%d): %s", mode, ex.FullDescription, ex.FilePath, ex.LineNumber,
				strings.ReplaceAll(msg, "\n", " ")))
		default:
			pending++
		}
	}
	fmt.Fprintf(out, "%s: %d examples, %d passed, %d failed (%d expected), %d pending, in %s\n",
		mode, len(r.Examples), passed, failed, failed-len(problems), pending, took.Round(time.Second))
	e.PrintPassed(out, mode, ok)
	return problems
}
