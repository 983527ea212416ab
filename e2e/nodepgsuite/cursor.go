package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// pg-cursor's tests (mocha) drive the protocol paths node-postgres's own
// integration tests do not: Execute with a row limit, PortalSuspended, more
// Executes of the same portal, Close of a portal, all without Sync until the
// cursor ends. They load pg from packages/pg through a shim module.

// probesJS is our own mocha file of node-postgres paths that its tests
// reach, in transaction mode, only after a CREATE TEMP TABLE or a LISTEN.
//
//go:embed probes.js
var probesJS []byte

// prepareCursor extracts packages/pg-cursor next to pgDir and installs
// mocha there; it returns packages/pg-cursor.
func prepareCursor(ctx context.Context, src, dir, pgDir string) (string, error) {
	cursorDir := filepath.Join(dir, "packages", "pg-cursor")
	if _, err := os.Stat(filepath.Join(cursorDir, "node_modules", ".bin", "mocha")); err == nil {
		return cursorDir, nil
	}
	c := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive HEAD packages/pg-cursor | tar -x -C "$2"`, "sh", src, dir)
	c.Stderr = os.Stderr
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("extract packages/pg-cursor from %s: %w", src, err)
	}
	if err := os.WriteFile(filepath.Join(cursorDir, "package.json"), []byte(`{"name":"nodepgsuite-cursor","private":true}`), 0o644); err != nil {
		return "", err
	}
	if err := suiterun.Command(ctx, cursorDir, nil, "npm", "install", "--no-save", "--no-package-lock", "--ignore-scripts", "--no-audit", "--no-fund", "mocha@11").Run(); err != nil {
		return "", fmt.Errorf("npm install mocha: %w", err)
	}
	// require('pg') and require('pg/lib/...') find packages/pg's lib.
	shim := filepath.Join(cursorDir, "node_modules", "pg")
	if err := os.MkdirAll(shim, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(shim, "package.json"), []byte(`{"name":"pg","main":"./lib"}`), 0o644); err != nil {
		return "", err
	}
	if err := os.Symlink(filepath.Join(pgDir, "lib"), filepath.Join(shim, "lib")); err != nil && !os.IsExist(err) {
		return "", err
	}
	return cursorDir, nil
}

// runMocha runs the mocha files of suite ("pg-cursor": pg-cursor's tests,
// "probes": probes.js) in env and returns one result per test, named
// "SUITE: FULL TITLE".
func runMocha(ctx context.Context, suite, cursorDir, pgDir, logDir string, env []string, timeout time.Duration) []fileResult {
	fail := func(msg string) []fileResult {
		return []fileResult{{file: suite, summary: msg}}
	}
	tests, _ := filepath.Glob(filepath.Join(cursorDir, "test", "*.js"))
	if suite == "probes" {
		// In a directory of pg-cursor's, so that require('../') is pg-cursor.
		p := filepath.Join(cursorDir, "probes", "probes.js")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fail(err.Error())
		}
		if err := os.WriteFile(p, probesJS, 0o644); err != nil {
			return fail(err.Error())
		}
		tests = []string{p}
		env = append(env, "NODEPG_PG_DIR="+pgDir)
	}
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return fail(err.Error())
	}
	report := filepath.Join(logDir, suite+".json")
	log, err := os.Create(filepath.Join(logDir, suite+".log"))
	if err != nil {
		return fail(err.Error())
	}
	defer log.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	args := append([]string{"--exit", "--timeout", "30000", "--reporter", "json", "--reporter-option", "output=" + report}, tests...)
	c := exec.CommandContext(cctx, filepath.Join(cursorDir, "node_modules", ".bin", "mocha"), args...)
	c.Dir = cursorDir
	c.Env = append(os.Environ(), env...)
	c.Stdout, c.Stderr = log, log
	c.Run() // mocha exits non-zero when a test fails: the report says which
	b, err := os.ReadFile(report)
	if err != nil {
		return fail(fmt.Sprintf("no mocha report (%v): see %s", err, log.Name()))
	}
	var rep struct {
		Passes, Failures []struct {
			FullTitle string
			Err       struct{ Message string }
		}
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return fail(fmt.Sprintf("mocha report %s: %v", report, err))
	}
	var rs []fileResult
	for _, t := range rep.Passes {
		rs = append(rs, fileResult{file: suite, ok: true, started: []string{t.FullTitle}, passed: 1})
	}
	for _, t := range rep.Failures {
		rs = append(rs, fileResult{file: suite, started: []string{t.FullTitle}, failed: t.FullTitle, summary: t.Err.Message})
	}
	return rs
}
