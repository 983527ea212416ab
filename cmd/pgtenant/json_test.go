package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// jsonOut runs a command with --json, checks it exits with want and that
// stdout is one JSON value with no field v does not know, and decodes it
// into v.
func jsonOut(t *testing.T, want int, v any, args ...string) {
	t.Helper()
	code, out, errOut := pgtenant(t, append(args, "--json")...)
	if code != want {
		t.Fatalf("pgtenant %s --json: exit %d, want %d\n%s%s", strings.Join(args, " "), code, want, out, errOut)
	}
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("pgtenant %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
	if dec.More() {
		t.Fatalf("pgtenant %s --json: more than one JSON value\n%s", strings.Join(args, " "), out)
	}
}

// Every --json output parses into its documented shape (docs/cli-json.md)
// and says what the table says; ops records a move with its pause, and a
// node split with its moves.
func TestJSONOutputs(t *testing.T) {
	migrations, err := filepath.Abs(filepath.Join("testdata", "migrations"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	dsnA := nodeA.NewDatabase(t)
	mustRun(t, "node", "add", "a", dsnA)
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")
	odd := `O'Reilly; "quoted" 東京`
	for _, id := range []string{"acme", odd} {
		mustRun(t, "tenant", "add", id)
	}
	mustRun(t, "tenant", "add", "pinned", "--shard", "3")

	var loc tenantLocation
	jsonOut(t, 0, &loc, "tenant", "locate", odd)
	if loc.Tenant != odd || loc.Shard != placement.ShardOf(odd, 4) || loc.Schema != placement.SchemaName(loc.Shard) ||
		loc.Node == "" || loc.State != "active" || !strings.Contains(loc.Connect, "search_path") {
		t.Errorf("tenant locate --json: %+v", loc)
	}
	var tenants []tenantJSON
	jsonOut(t, 0, &tenants, "tenant", "list")
	if len(tenants) != 3 {
		t.Fatalf("tenant list --json: %+v", tenants)
	}
	placed := map[string]string{}
	for _, tj := range tenants {
		placed[tj.Tenant] = fmt.Sprint(tj.Shard, tj.Placed)
	}
	if placed["pinned"] != "3explicit" || placed[odd] != fmt.Sprint(placement.ShardOf(odd, 4), "hash") {
		t.Errorf("tenant list --json: %+v", tenants)
	}
	if out := mustRun(t, "tenant", "list"); !strings.Contains(out, odd+"  ") || strings.Contains(out, `"pinned"`) {
		t.Errorf("tenant list shows ids without quotes:\n%s", out)
	}
	// user list: the role each user's transactions run as ("" = the runtime
	// role), and a restricted user's tenant.
	var users []userJSON
	jsonOut(t, 0, &users, "user", "list")
	if users == nil || len(users) != 0 {
		t.Errorf("user list --json without users: %+v, want []", users)
	}
	if code, out, errOut := pgtenantIn(t, "secret", "user", "add", "app", "--password-stdin"); code != 0 {
		t.Fatalf("user add app: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := pgtenantIn(t, "secret", "user", "add", "bob", "--tenant", "pinned", "--password-stdin"); code != 0 {
		t.Fatalf("user add bob --tenant pinned: exit %d\n%s%s", code, out, errOut)
	}
	jsonOut(t, 0, &users, "user", "list")
	if want := []userJSON{{User: "app"}, {User: "bob", Role: access.RestrictedRole(3), Tenant: "pinned"}}; !reflect.DeepEqual(users, want) {
		t.Errorf("user list --json: %+v, want %+v", users, want)
	}

	var nodes []nodeJSON
	jsonOut(t, 0, &nodes, "node", "list")
	if len(nodes) != 2 || nodes[0].Node != "a" || nodes[0].Shards != 2 || nodes[1].Shards != 2 || nodes[0].DSN == "" {
		t.Errorf("node list --json: %+v", nodes)
	}

	// migrate status: behind before up, current after, summarised for humans.
	var ms migrateStatusJSON
	jsonOut(t, 1, &ms, "migrate", "status", "--dir", migrations)
	if ms.Shards != 4 || ms.Behind != 4 || ms.Latest != 2 || len(ms.ShardStatus) != 4 ||
		len(ms.Versions) != 1 || ms.Versions[0] != (versionCount{0, 4}) || len(ms.ShardStatus[0].Pending) != 2 {
		t.Errorf("migrate status --json, nothing applied: %+v", ms)
	}
	mustRun(t, "migrate", "up", "--dir", migrations)
	jsonOut(t, 0, &ms, "migrate", "status")
	if ms.Shards != 4 || ms.Behind != 0 || len(ms.ShardStatus) != 0 || len(ms.Versions) != 1 || ms.Versions[0] != (versionCount{2, 4}) {
		t.Errorf("migrate status --json, current: %+v", ms)
	}
	if out := mustRun(t, "migrate", "status"); out != fmt.Sprintf("all 4 shards are current at version 2 (migrations from %s)\n", migrations) {
		t.Errorf("migrate status:\n%s", out)
	}
	jsonOut(t, 0, &ms, "migrate", "status", "--all")
	if len(ms.ShardStatus) != 4 || ms.ShardStatus[0].Current != 2 || ms.ShardStatus[0].Pending == nil {
		t.Errorf("migrate status --all --json: %+v", ms)
	}

	// A move (copy method: no logical replication needed) and a split.
	shard := placement.ShardOf("acme", 4)
	var shards []shardJSON
	jsonOut(t, 0, &shards, "shard", "list")
	if len(shards) != 4 || shards[shard].Bytes == nil || *shards[shard].Bytes <= 0 || shards[shard].State != "active" || shards[shard].Epoch != 0 {
		t.Fatalf("shard list --json: %+v", shards)
	}
	if out := mustRun(t, "shard", "list"); !strings.Contains(out, "SIZE") || !strings.Contains(out, " kB ") {
		t.Errorf("shard list shows sizes for humans:\n%s", out)
	}
	from := shards[shard].Node
	to := map[string]string{"a": "b", "b": "a"}[from]
	mustRun(t, "shard", "move", fmt.Sprint(shard), "--to", to, "--method", "copy")
	var moves []moveJSON
	jsonOut(t, 0, &moves, "shard", "moves")
	if len(moves) != 1 || moves[0].Shard != shard || moves[0].From != from || moves[0].To != to || moves[0].Status != "done" ||
		moves[0].PauseMS == nil || *moves[0].PauseMS <= 0 || moves[0].FinishedAt == nil {
		t.Fatalf("shard moves --json: %+v", moves)
	}
	jsonOut(t, 0, &shards, "shard", "list")
	if shards[shard].Node != to || shards[shard].Epoch != 1 {
		t.Errorf("shard list --json after the move: %+v", shards[shard])
	}
	mustRun(t, "node", "add", "c", nodeA.NewDatabase(t))
	// The target now holds 3 shards: the split moves 1 of them.
	// The split passes its method on: trigger (no logical replication either).
	mustRun(t, "node", "split", to, "--to", "c", "--method", "trigger", "--parallel", "1")
	jsonOut(t, 0, &moves, "shard", "moves")
	if len(moves) != 2 || moves[0].Method != "trigger" || moves[0].Status != "done" || moves[0].To != "c" {
		t.Errorf("shard moves --json after the split: %+v", moves)
	}

	var ops []opJSON
	jsonOut(t, 0, &ops, "ops", "--limit", "5")
	if len(ops) != 5 {
		t.Fatalf("ops --json: %d entries", len(ops))
	}
	type moveDetail struct {
		MoveID  int64    `json:"move_id"`
		Shard   *int     `json:"shard"`
		From    string   `json:"from"`
		To      string   `json:"to"`
		Plan    string   `json:"plan"`
		PauseMS *float64 `json:"pause_ms"`
		Rows    *int64   `json:"rows"`
	}
	var split struct {
		Node    string  `json:"node"`
		To      string  `json:"to"`
		Planned int     `json:"planned"`
		Moved   int     `json:"moved"`
		Failed  int     `json:"failed"`
		Longest float64 `json:"longest_pause_ms"`
	}
	if ops[0].Op != "node split" || !ops[0].OK {
		t.Fatalf("newest op: %+v", ops[0])
	}
	if err := json.Unmarshal(ops[0].Detail, &split); err != nil || split.Node != to || split.To != "c" || split.Planned != 1 ||
		split.Moved != 1 || split.Failed != 0 || split.Longest <= 0 {
		t.Errorf("node split detail %s: %+v %v", ops[0].Detail, split, err)
	}
	var sawMove, sawSplitMove int
	for _, o := range ops[1:] {
		if o.Op != "shard move" {
			continue
		}
		var d moveDetail
		if err := json.Unmarshal(o.Detail, &d); err != nil || !o.OK || d.MoveID == 0 || d.Shard == nil || d.PauseMS == nil || *d.PauseMS <= 0 || d.Rows == nil {
			t.Errorf("shard move detail %s: %v", o.Detail, err)
			continue
		}
		switch {
		case d.Plan == "node split" && d.From == to && d.To == "c":
			sawSplitMove++
		case d.Plan == "" && *d.Shard == shard && d.From == from && d.To == to:
			sawMove++
		}
	}
	if sawMove != 1 || sawSplitMove != 1 {
		t.Errorf("ops: %d single moves, %d moves of the split, want 1 and 1: %+v", sawMove, sawSplitMove, ops)
	}
	out := mustRun(t, "ops", "--limit", "5")
	if !strings.Contains(out, "pause_ms=") || !strings.Contains(out, "node split") {
		t.Errorf("ops for humans shows moves with their pause:\n%s", out)
	}

	var v versionInfo
	jsonOut(t, 0, &v, "version")
	if v.Go != runtime.Version() || v.Version == "" || v.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version --json: %+v", v)
	}
	if out := mustRun(t, "version"); !strings.HasPrefix(out, "pgtenant ") || !strings.Contains(out, runtime.Version()) {
		t.Errorf("version: %q", out)
	}
}

// --log-format json writes one JSON object per log line on stderr.
func TestLogFormatJSON(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	code, _, errOut := pgtenant(t, "init", "--shards", "4", "--log-format", "json", "--log-level", "info")
	if code != 0 {
		t.Fatalf("init: exit %d\n%s", code, errOut)
	}
	lines := 0
	sc := bufio.NewScanner(strings.NewReader(errOut))
	for sc.Scan() {
		var rec struct {
			Time  string `json:"time"`
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil || rec.Time == "" || rec.Level != "INFO" || rec.Msg == "" {
			t.Errorf("log line %q: %+v %v", sc.Text(), rec, err)
		}
		lines++
	}
	if lines == 0 || !strings.Contains(errOut, `"msg":"catalog upgraded"`) {
		t.Errorf("no JSON log lines on stderr: %q", errOut)
	}
	// The config file's log_format and log_level apply without flags.
	os.WriteFile("pgtenant.yaml", []byte("log_format: json\nlog_level: info\n"), 0o644)
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	if code, _, errOut := pgtenant(t, "init", "--shards", "4"); code != 0 || !bytes.HasPrefix([]byte(errOut), []byte(`{"time":`)) {
		t.Errorf("log_format from the config file: exit %d, %q", code, errOut)
	}
	if code, _, errOut := pgtenant(t, "ops", "--log-format", "xml"); code != 2 || !strings.Contains(errOut, "text or json") {
		t.Errorf("--log-format xml: exit %d, %q", code, errOut)
	}
}

// With --log-format json a failing command's error is a JSON record too,
// with its SQLSTATE and hint as fields (it was a plain "error: ..." line).
func TestLogFormatJSONFailure(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	code, _, errOut := pgtenant(t, "node", "remove", "nosuch", "--log-format", "json")
	if code != 1 {
		t.Fatalf("node remove nosuch: exit %d, want 1\n%s", code, errOut)
	}
	var last struct {
		Level, Msg, Error, SQLState string
		Exit                        int
	}
	sc := bufio.NewScanner(strings.NewReader(errOut))
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Errorf("stderr line %q is not JSON: %v", sc.Text(), err)
		}
	}
	if last.Level != "ERROR" || last.Msg != "command failed" || last.SQLState != "42704" || last.Exit != 1 ||
		!strings.Contains(last.Error, `node "nosuch" is unknown`) {
		t.Errorf("last stderr record: %+v\n%s", last, errOut)
	}
	// A usage error after the logger is set up: JSON with exit 2.
	code, _, errOut = pgtenant(t, "tenant", "add", "--log-format", "json")
	if code != 2 || !strings.HasPrefix(errOut, "{") || !strings.Contains(errOut, `"exit":2`) {
		t.Errorf("tenant add without an id: exit %d, %q", code, errOut)
	}
	// The text format is unchanged.
	if code, _, errOut := pgtenant(t, "node", "remove", "nosuch"); code != 1 || !strings.HasPrefix(errOut, "error: ") || !strings.Contains(errOut, "node \"nosuch\" is unknown (SQLSTATE 42704)") {
		t.Errorf("text: exit %d, %q", code, errOut)
	}
}

// errorSQLState and errorHint read a code and hint from the error's type or text.
func TestErrorSQLStateAndHint(t *testing.T) {
	for _, c := range []struct {
		err        error
		code, hint string
	}{
		{&pgconn.PgError{Code: "3D000", Hint: "create it"}, "3D000", "create it"},
		{fmt.Errorf("node add: %w", &pgconn.PgError{Code: "42501"}), "42501", ""},
		{errors.New("catalog is not initialised (SQLSTATE 55000)\nhint: run `pgtenant init`"), "55000", "run `pgtenant init`"},
		{errors.New("plain"), "", ""},
	} {
		if got := errorSQLState(c.err); got != c.code {
			t.Errorf("errorSQLState(%v) = %q, want %q", c.err, got, c.code)
		}
		if got := errorHint(c.err); got != c.hint {
			t.Errorf("errorHint(%v) = %q, want %q", c.err, got, c.hint)
		}
	}
}
