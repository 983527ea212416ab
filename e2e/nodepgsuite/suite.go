package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// traceJS is preloaded (node -r) into every test file's process: it
// writes to $NODEPG_TRACE a line "start NAME" when node-postgres's Suite
// prints a test's name and "pass" when it prints the check mark after it,
// so that a failure is named by its test without parsing the output.
const traceJS = `'use strict'
const fs = require('fs')
const fd = fs.openSync(process.env.NODEPG_TRACE, 'a')
const write = process.stdout.write.bind(process.stdout)
process.stdout.write = function (chunk, ...rest) {
  const s = String(chunk)
  const m = /^  (.*) $/s.exec(s)
  if (m && !s.includes('\n')) fs.writeSync(fd, 'start ' + m[1] + '\n')
  else if (s === '\u2714\n') fs.writeSync(fd, 'pass\n')
  else if (s.startsWith('? - SKIPPED')) fs.writeSync(fd, 'skip\n')
  return write(chunk, ...rest)
}
`

// fileResult is the outcome of one test file.
type fileResult struct {
	file    string   // relative to test/integration
	ok      bool     // exit status 0
	started []string // tests in the order they started
	passed  int
	failed  string // the test it stopped in ("" if outside any test)
	summary string // exit status and the first line that explains the failure
}

// key names a failure in the expected-failure lists: "FILE: TEST", or FILE
// alone for a failure outside any test.
func (r fileResult) key() string {
	if r.failed == "" {
		return r.file
	}
	return r.file + ": " + r.failed
}

// runFiles runs files one after another, file i in env(i), each file's
// output in logDir.
func runFiles(ctx context.Context, pgDir, logDir string, files []string, env func(int) []string, timeout time.Duration) []fileResult {
	var rs []fileResult
	for i, f := range files {
		if ctx.Err() != nil {
			break
		}
		rs = append(rs, runFile(ctx, pgDir, logDir, f, env(i), timeout))
	}
	return rs
}

// runFile runs one test file with node and reads its trace.
func runFile(ctx context.Context, pgDir, logDir, file string, env []string, timeout time.Duration) fileResult {
	r := fileResult{file: file}
	name := strings.ReplaceAll(file, "/", "__")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		r.summary = err.Error()
		return r
	}
	preload := filepath.Join(logDir, "..", "trace.js")
	if err := os.WriteFile(preload, []byte(traceJS), 0o644); err != nil {
		r.summary = err.Error()
		return r
	}
	trace := filepath.Join(logDir, name+".trace")
	os.Remove(trace)
	logPath := filepath.Join(logDir, name+".log")
	log, err := os.Create(logPath)
	if err != nil {
		r.summary = err.Error()
		return r
	}
	defer log.Close()
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	abs, _ := filepath.Abs(preload)
	c := exec.CommandContext(fctx, "node", "-r", abs, filepath.Join("test", "integration", file))
	c.Dir = pgDir
	c.Env = append(append(os.Environ(), env...), "NODEPG_TRACE="+trace)
	c.Stdout, c.Stderr = log, log
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGKILL) }
	err = c.Run()
	r.ok = err == nil
	readTrace(trace, &r)
	switch {
	case r.ok:
	case fctx.Err() != nil && ctx.Err() == nil:
		r.summary = fmt.Sprintf("hang: still running after %s", timeout)
	default:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			r.summary = fmt.Sprintf("exit %d: %s", ee.ExitCode(), firstReason(logPath))
		} else {
			r.summary = err.Error()
		}
	}
	return r
}

// readTrace fills r's tests from the preloaded script's trace file.
func readTrace(path string, r *fileResult) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	open := ""
	for _, line := range strings.Split(string(b), "\n") {
		switch {
		case strings.HasPrefix(line, "start "):
			open = strings.TrimPrefix(line, "start ")
			r.started = append(r.started, open)
		case line == "pass":
			r.passed++
			open = ""
		case line == "skip":
			open = ""
		}
	}
	if !r.ok {
		r.failed = open
	}
}

// firstReason is the first line of a failed file's output that says why:
// an assertion or error message, or the suite's timeout.
func firstReason(logPath string) string {
	f, err := os.Open(logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		for _, p := range []string{"Message: ", "Error: ", "error: ", "AssertionError"} {
			if i := strings.Index(line, p); i >= 0 {
				return line[i:]
			}
		}
	}
	return "see " + logPath
}

// listedIn returns the entries listed for a result that passed: any of its
// file's (a file stops at its first failure), or a mocha test's own.
func listedIn(e *suiterun.Expected, r fileResult) []string {
	if r.file == "pg-cursor" || r.file == "probes" {
		if k := r.file + ": " + r.started[0]; e.Has(k) {
			return []string{k}
		}
		return nil
	}
	var ks []string
	for k := range e.Reasons {
		if k == r.file || strings.HasPrefix(k, r.file+": ") {
			ks = append(ks, k)
		}
	}
	return ks
}
