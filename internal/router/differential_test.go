package router

// The differential protocol tester: the same generated sequence of
// frontend messages (differential_gen_test.go) is sent straight to
// PostgreSQL, on a connection whose search_path is the tenant's shard
// schema and whose pgtenant.tenant_id is set, and through a router in each
// pool mode with that tenant named at startup; the backend messages must
// be the same after diffNormal. Each target has a database of its own
// (same schema, kv reset before every run), so the three run at once.
//
//	go test ./internal/router -run TestDifferential -count=1            # CI: diffSeeds seeds
//	go test ./internal/router -run TestDifferential -diffseed 123 -v    # one seed
//	go test ./internal/router -run '^$' -fuzz FuzzDifferential -parallel 1

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/placement"
)

var (
	diffSeeds = flag.Int("diffseeds", 300, "TestDifferential: how many seeds")
	diffSeed  = flag.Int64("diffseed", -1, "TestDifferential: run this one seed only")
)

// diffTenant is the tenant every run works for; its shard is 0.
const diffTenant = "t0"

// diffTarget is one way to reach the tenant's shard: PostgreSQL directly
// or a router in one pool mode, each over a database of its own.
type diffTarget struct {
	name    string
	admin   *pgx.Conn
	connect func(ctx context.Context) (*pgconn.PgConn, error)
}

// diffMessage is one backend message: key is what is compared, full what
// a failure prints.
type diffMessage struct{ key, full string }

// diffRun is a target's answers, one list per step.
type diffRun [][]diffMessage

// diffTargets makes the three targets.
func diffTargets(t testing.TB) []*diffTarget {
	schema := placement.SchemaName(0)
	shardDB := func() (string, *pgx.Conn) {
		dsn := nodeA.NewDatabase(t)
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		if _, err := c.Exec(context.Background(), fmt.Sprintf(
			"CREATE SCHEMA %[1]s; CREATE TABLE %[1]s.kv (id int PRIMARY KEY, v text NOT NULL)",
			pgx.Identifier{schema}.Sanitize())); err != nil {
			t.Fatal(err)
		}
		return dsn, c
	}
	dsn, admin := shardDB()
	direct := &diffTarget{name: "PostgreSQL", admin: admin, connect: func(ctx context.Context) (*pgconn.PgConn, error) {
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			return nil, err
		}
		cfg.RuntimeParams["search_path"] = schema + ", public, pg_temp"
		cfg.RuntimeParams["pgtenant.tenant_id"] = diffTenant
		return pgconn.ConnectConfig(ctx, cfg)
	}}
	targets := []*diffTarget{direct}
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		dsn, admin := shardDB()
		m := &placement.Map{Version: 1,
			Nodes:   map[string]placement.Node{"a": {Name: "a", DSN: dsn}},
			Shards:  []placement.Shard{{ID: 0, Schema: schema, Node: "a", State: placement.StateActive, Epoch: 1}},
			Tenants: map[string]int{diffTenant: 0}}
		s := startRouter(t, Config{PoolMode: mode, Auth: AuthTrust, Pool: PoolConfig{MaxSize: 3}}, m)
		url := routerURL(s, diffTenant)
		targets = append(targets, &diffTarget{name: "router " + string(mode) + " mode", admin: admin,
			connect: func(ctx context.Context) (*pgconn.PgConn, error) { return pgconn.Connect(ctx, url) }})
	}
	return targets
}

// run resets kv and sends seq on a new connection.
func (d *diffTarget) run(seq [][]pgproto3.FrontendMessage) (diffRun, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := d.admin.Exec(ctx, "TRUNCATE shard_0000.kv; INSERT INTO shard_0000.kv SELECT g, 'v' || g FROM generate_series(1, 5) g"); err != nil {
		return nil, fmt.Errorf("reset kv: %w", err)
	}
	pc, err := d.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer pc.Close(context.Background())
	fe := pc.Frontend()
	var out diffRun
	for _, step := range seq {
		var got []diffMessage
		ready := 0
		for _, m := range step {
			fe.Send(m)
			switch m.(type) {
			case *pgproto3.Query, *pgproto3.Sync:
				ready++
			}
		}
		if err := fe.Flush(); err != nil {
			return append(out, append(got, diffMessage{"send failed", err.Error()})), nil
		}
		pc.Conn().SetReadDeadline(time.Now().Add(20 * time.Second))
		for ready > 0 {
			msg, err := fe.Receive()
			if err != nil {
				return append(out, append(got, diffMessage{"connection ended", err.Error()})), nil
			}
			dm, keep := diffNormal(msg)
			if keep {
				got = append(got, dm)
			}
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				ready--
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
				return append(out, got), nil
			}
		}
		out = append(out, got)
	}
	return out, nil
}

// diffNormal is the normalisation: what of a backend message is compared.
// Message types in order; for RowDescription the column names, types and
// formats (not table oids); DataRow values; CommandComplete tags;
// ErrorResponse and NoticeResponse severity and SQLSTATE (the router words
// its own errors); ReadyForQuery status; ParameterStatus name and value.
// Left out on purpose: BackendKeyData and the startup's ParameterStatus
// (pgconn reads them; the router sends its own key and the settings of
// the first backend it reached).
func diffNormal(msg pgproto3.BackendMessage) (diffMessage, bool) {
	switch m := msg.(type) {
	case *pgproto3.ParseComplete:
		return diffMessage{"1", "ParseComplete"}, true
	case *pgproto3.BindComplete:
		return diffMessage{"2", "BindComplete"}, true
	case *pgproto3.CloseComplete:
		return diffMessage{"3", "CloseComplete"}, true
	case *pgproto3.NoData:
		return diffMessage{"n", "NoData"}, true
	case *pgproto3.PortalSuspended:
		return diffMessage{"s", "PortalSuspended"}, true
	case *pgproto3.EmptyQueryResponse:
		return diffMessage{"I", "EmptyQueryResponse"}, true
	case *pgproto3.ParameterDescription:
		k := fmt.Sprintf("t%v", m.ParameterOIDs)
		return diffMessage{k, k}, true
	case *pgproto3.RowDescription:
		var cols []string
		for _, f := range m.Fields {
			cols = append(cols, fmt.Sprintf("%s:%d:%d", f.Name, f.DataTypeOID, f.Format))
		}
		k := "T(" + strings.Join(cols, ",") + ")"
		return diffMessage{k, k}, true
	case *pgproto3.DataRow:
		var vs []string
		for _, v := range m.Values {
			if v == nil {
				vs = append(vs, "NULL")
			} else {
				vs = append(vs, fmt.Sprintf("%q", v))
			}
		}
		k := "D(" + strings.Join(vs, ",") + ")"
		return diffMessage{k, k}, true
	case *pgproto3.CommandComplete:
		k := "C(" + string(m.CommandTag) + ")"
		return diffMessage{k, k}, true
	case *pgproto3.ErrorResponse:
		return diffMessage{"E(" + m.Severity + " " + m.Code + ")", fmt.Sprintf("E(%s %s %s)", m.Severity, m.Code, m.Message)}, true
	case *pgproto3.NoticeResponse:
		return diffMessage{"N(" + m.Severity + " " + m.Code + ")", fmt.Sprintf("N(%s %s %s)", m.Severity, m.Code, m.Message)}, true
	case *pgproto3.ParameterStatus:
		k := "S(" + m.Name + "=" + m.Value + ")"
		return diffMessage{k, k}, true
	case *pgproto3.ReadyForQuery:
		k := "Z" + string(m.TxStatus)
		return diffMessage{k, k}, true
	case *pgproto3.BackendKeyData:
		return diffMessage{}, false
	}
	k := fmt.Sprintf("%T", msg)
	return diffMessage{k, k}, true
}

// diffKnown are the differences the router makes and this tester
// accepts, each as the first message that differs (PostgreSQL's, the
// router's) and why. The run is not compared past it (the streams go
// their own ways after); TestDifferential logs how often each was met.
// Left for later: each is a difference a client could see.
var diffKnown = []struct {
	why       string
	want, got func(k string) bool
}{
	{"the router checks a Parse's statement name (42P05) before the server analyses its text",
		prefix("E(ERROR 42"), is("E(ERROR 42P05)")},
	{"after an error the router made itself inside a transaction block, it has rolled the block back and answers " +
		"25P02 without a server: PostgreSQL checks portals, syntax, names and parameter counts first, and answers an empty query",
		oneOf("E(ERROR 34000)", "E(ERROR 42601)", "E(ERROR 26000)", "E(ERROR 08P01)", "E(ERROR 55000)", "I"), is("E(ERROR 25P02)")},
	{"the router answers a Parse itself when it cannot send it yet (no backend, a deferred BEGIN): " +
		"the server's error for the text comes at its Bind or Describe",
		prefix("E(ERROR 42"), oneOf("1", "2", "n", "t[]")},
	{"the router's RESET ALL on a backend, and its replay of the client's settings, are reported (ParameterStatus): " +
		"of settings another client left on a transaction-mode backend, or after this client's SET (the backend's " +
		"settings are unknown until its next statement); the runs are compared again without ParameterStatus",
		func(string) bool { return true }, prefix("S(")},
	{"a portal the router made for a deferred BEGIN is gone at Sync; in a block PostgreSQL keeps it (55000 when run again)",
		is("E(ERROR 55000)"), is("E(ERROR 34000)")},
}

func is(k string) func(string) bool { return func(s string) bool { return s == k } }

func prefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

func oneOf(ks ...string) func(string) bool {
	return func(s string) bool {
		for _, k := range ks {
			if s == k {
				return true
			}
		}
		return false
	}
}

// diffCompare returns "" when got has want's keys, else a report of the
// sequence and both streams, step by step; known is the reason from
// diffKnown when the first difference is one of those (the report is ""
// then).
func diffCompare(seed int64, seq [][]pgproto3.FrontendMessage, wantName string, want diffRun, gotName string, got diffRun) (report, known string) {
	if w, g, ok := diffFirst(want, got); !ok {
		for _, k := range diffKnown {
			if k.want(w) && k.got(g) {
				if strings.HasPrefix(g, "S(") {
					// What the client reads past the reports (SHOW, rows)
					// must still agree: a SET the router lost (set15).
					if r, known := diffCompare(seed, seq, wantName, withoutStatus(want), gotName, withoutStatus(got)); r != "" || known != "" {
						return r, known
					}
				}
				return "", k.why
			}
		}
	} else {
		return "", ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %s differs from %s (-diffseed %d)\n", seed, gotName, wantName, seed)
	for i, step := range seq {
		fmt.Fprintf(&b, "step %d:\n", i+1)
		for _, m := range step {
			fmt.Fprintf(&b, "    > %s\n", diffFormat(m))
		}
		var w, g []diffMessage
		if i < len(want) {
			w = want[i]
		}
		if i < len(got) {
			g = got[i]
		}
		for j := 0; j < len(w) || j < len(g); j++ {
			var ws, gs, mark string
			if j < len(w) {
				ws = w[j].full
			}
			if j < len(g) {
				gs = g[j].full
			}
			if j >= len(w) || j >= len(g) || w[j].key != g[j].key {
				mark = " <--"
			}
			fmt.Fprintf(&b, "    %-60s | %s%s\n", ws, gs, mark)
		}
	}
	return b.String(), ""
}

// withoutStatus is r without its ParameterStatus messages.
func withoutStatus(r diffRun) diffRun {
	out := make(diffRun, len(r))
	for i, step := range r {
		for _, m := range step {
			if !strings.HasPrefix(m.key, "S(") {
				out[i] = append(out[i], m)
			}
		}
	}
	return out
}

// diffFirst returns the keys of the first messages that differ ("" for
// one missing), or ok when the runs are the same.
func diffFirst(want, got diffRun) (w, g string, ok bool) {
	for i := 0; i < len(want) || i < len(got); i++ {
		var ws, gs []diffMessage
		if i < len(want) {
			ws = want[i]
		}
		if i < len(got) {
			gs = got[i]
		}
		for j := 0; j < len(ws) || j < len(gs); j++ {
			w, g = "", ""
			if j < len(ws) {
				w = ws[j].key
			}
			if j < len(gs) {
				g = gs[j].key
			}
			if w != g {
				return w, g, false
			}
		}
	}
	return "", "", true
}

// diffCheck runs seed on every target at once and reports each router
// run that differs from PostgreSQL's.
func diffCheck(t testing.TB, targets []*diffTarget, seed int64) {
	diffCheckSeq(t, targets, seed, diffSequence(seed))
}

// diffCheckSeq is diffCheck of a given sequence (seed only names it).
func diffCheckSeq(t testing.TB, targets []*diffTarget, seed int64, seq [][]pgproto3.FrontendMessage) {
	start := time.Now()
	defer func() {
		if d := time.Since(start); d > time.Second {
			t.Logf("seed %d took %v", seed, d)
		}
	}()
	runs := make([]diffRun, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, d := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runs[i], errs[i] = d.run(seq)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("seed %d, %s: %v", seed, targets[i].name, err)
		}
	}
	for i := 1; i < len(targets); i++ {
		r, known := diffCompare(seed, seq, targets[0].name, runs[0], targets[i].name, runs[i])
		if r != "" {
			t.Error(r)
		}
		if known != "" && knownSeen != nil {
			knownSeen[known]++
		}
	}
}

// knownSeen counts the diffKnown differences met (TestDifferential).
var knownSeen map[string]int

// TestDifferential sends diffSeeds generated sequences to PostgreSQL and
// through the router in both pool modes, and fails on any difference.
func TestDifferential(t *testing.T) {
	targets := diffTargets(t)
	knownSeen = map[string]int{}
	defer func() {
		for why, n := range knownSeen {
			t.Logf("known difference, %d runs: %s", n, why)
		}
		knownSeen = nil
	}()
	if *diffSeed >= 0 {
		diffCheck(t, targets, *diffSeed)
		return
	}
	for seed := int64(0); seed < int64(*diffSeeds); seed++ {
		diffCheck(t, targets, seed)
	}
}

// FuzzDifferential is TestDifferential for go test -fuzz (by hand: it
// starts the test servers in every fuzz worker).
func FuzzDifferential(f *testing.F) {
	for _, s := range []int64{0, 1, 2, 3} {
		f.Add(s)
	}
	targets := diffTargets(f)
	f.Fuzz(func(t *testing.T, seed int64) { diffCheck(t, targets, seed) })
}
