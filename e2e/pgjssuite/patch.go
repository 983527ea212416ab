package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// A patch replaces one piece of a file of postgres.js with another; the
// piece must be there exactly once (a newer postgres.js that moved it fails
// the run instead of running unpatched).
type patch struct {
	file, old, new string
}

// patches are the runner's changes to postgres.js's source (see the
// package comment).
var patches = []patch{
	// The harness: run every test, not only those before the first
	// failure; record each as it ends, as a JSON line in $PGJS_RESULTS;
	// after a failure, drop the table test that most tests make and drop
	// at their end (or every later one fails on it); an error that nothing
	// catches (a connection's, in a test that failed already) is recorded
	// instead of ending the suite.
	{"tests/test.js", "    failed\n      ? (ignored++, ignore)\n      : fn()", "    fn()"},
	{"tests/test.js", "    .then(() => {\n      ++done ===", "    .then(async() => {\n      await pgjsRecord(tests[line])\n      ++done ==="},
	{"tests/test.js", "function exit() {\n", "function exit() {\n" +
		"  fs.appendFileSync(process.env.PGJS_RESULTS, JSON.stringify({ done: true }) + '\\n')\n" +
		"  setTimeout(() => process.exit(), 3000)\n"},
	{"tests/test.js", "import util from 'util'\n", "import util from 'util'\nimport fs from 'fs'\n\n" +
		"import postgres from '../src/index.js'\n\n" +
		"async function pgjsRecord(x) {\n" +
		"  fs.appendFileSync(process.env.PGJS_RESULTS, JSON.stringify({ name: x.name, line: +x.line, ok: !!x.succeeded,\n" +
		"    error: x.error ? util.inspect(x.error).slice(0, 1500) : '' }) + '\\n')\n" +
		"  if (x.succeeded) return\n" +
		"  const sql = postgres({ db: 'postgres_js_test', user: 'postgres_js_test', max: 1, connect_timeout: 2, onnotice: () => {} })\n" +
		"  await sql`drop table if exists test`.catch(() => {})\n" +
		"  await sql.end({ timeout: 1 }).catch(() => {})\n" +
		"}\n\n" +
		"process.on('uncaughtException', e => fs.appendFileSync(process.env.PGJS_RESULTS,\n" +
		"  JSON.stringify({ name: 'uncaught: ' + String(e && e.message).slice(0, 200), ok: false, error: util.inspect(e).slice(0, 1500) }) + '\\n'))\n"},
	// Startup options from PGOPTIONS, as libpq takes them (the tenant).
	{"src/index.js", "      application_name: env.PGAPPNAME || 'postgres.js',\n",
		"      application_name: env.PGAPPNAME || 'postgres.js',\n      ...(env.PGOPTIONS ? { options: env.PGOPTIONS } : {}),\n"},
}

// bootstrapJS replaces tests/bootstrap.js, whose statements the runner has
// run already (bootstrap-orig.js, on the server): its exec, which a few
// tests use to turn the server's ssl off and on, runs the command as the
// server's superuser on the server itself, never through the router.
const bootstrapJS = `import { spawnSync } from 'child_process'

export function exec(cmd, args) {
  const env = { ...process.env, PGHOST: process.env.PGJS_SERVER_HOST, PGPORT: process.env.PGJS_SERVER_PORT,
    PGUSER: 'postgres', PGOPTIONS: '', PGDATABASE: 'postgres' }
  const { stderr } = spawnSync(cmd, args, { stdio: 'pipe', encoding: 'utf8', env })
  if (stderr && !stderr.includes('already exists') && !stderr.includes('does not exist') && !stderr.includes('WARNING:'))
    throw stderr
}
`

// applyPatches patches the copy of postgres.js in dir.
func applyPatches(dir string) error {
	for _, p := range patches {
		path := filepath.Join(dir, p.file)
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("patch postgres.js: %w", err)
		}
		if n := strings.Count(string(b), p.old); n != 1 {
			return fmt.Errorf("patch %s: the text to replace is there %d times, want once: %q", p.file, n, p.old)
		}
		if err := os.WriteFile(path, []byte(strings.Replace(string(b), p.old, p.new, 1)), 0o644); err != nil {
			return fmt.Errorf("patch %s: %w", p.file, err)
		}
	}
	boot := filepath.Join(dir, "tests", "bootstrap.js")
	if err := os.Rename(boot, filepath.Join(dir, "tests", "bootstrap-orig.js")); err != nil {
		return fmt.Errorf("keep the suite's bootstrap: %w", err)
	}
	return os.WriteFile(boot, []byte(bootstrapJS), 0o644)
}
