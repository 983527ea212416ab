package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/router"
)

// Router settings come from flags first, then the config file, then the
// flags' defaults; bad combinations are usage errors that say what is
// wrong.
func TestRouterConfigSources(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	if err := os.WriteFile(path, []byte(`router:
  pool_mode: session
  pool_size: 7
  pool_idle_timeout: 90s
  pool_check_idle: -1s
  max_clients: 50
  hold_timeout: 2m
  reset_tenant_after_transaction: true
  ddl: refuse
`), 0o600); err != nil {
		t.Fatal(err)
	}
	file, _, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd := newRouterCmd(&app{})
	if err := cmd.ParseFlags([]string{"--pool-size", "9", "--max-prepared", "200", "--client-idle-timeout", "10m"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := routerConfig(cmd, file.Router, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := router.PoolConfig{MaxSize: 9, IdleTimeout: 90 * time.Second, MaxLifetime: time.Hour,
		WaitTimeout: 5 * time.Second, ConnectTimeout: 5 * time.Second, CheckIdle: -time.Second}
	if cfg.Pool != want {
		t.Errorf("pool = %+v\nwant %+v", cfg.Pool, want)
	}
	if cfg.SharedSchema != "public" || cfg.NoSharedSchema || cfg.IdleInTransactionTimeout != router.DefaultIdleInTransactionTimeout {
		t.Errorf("shared schema %q (none %v), idle in transaction timeout %s: want public and the default", cfg.SharedSchema, cfg.NoSharedSchema, cfg.IdleInTransactionTimeout)
	}
	if cfg.PoolMode != router.PoolSession || cfg.MaxClients != 50 || cfg.MaxPrepared != 200 || cfg.MaxMessage != 64<<20 ||
		cfg.HoldTimeout != 2*time.Minute || cfg.ClientIdleTimeout != 10*time.Minute || cfg.StartupTimeout != 10*time.Second ||
		!cfg.ResetTenantAfterTransaction || cfg.DDL != router.DDLRefuse {
		t.Errorf("config = %+v", cfg)
	}

	for _, args := range [][]string{
		{"--pool-min-idle", "30"},
		{"--pool-wait-timeout", "0s"},
		{"--max-prepared", "3"},
		{"--client-idle-timeout", "-1s"},
		{"--pool-mode", "statement"},
		{"--idle-in-transaction-timeout", "-1s"},
		{"--ddl", "off"},
	} {
		cmd := newRouterCmd(&app{})
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatal(err)
		}
		_, err := routerConfig(cmd, RouterConfig{}, nil)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(strings.ReplaceAll(err.Error(), " ", "-"), strings.TrimPrefix(args[0], "--")) {
			t.Errorf("%v: got %v, want a usage error", args, err)
		}
	}
}

// shared_schema: "" in the file means no shared schema, idle_in_transaction_timeout: 0
// means never; flags win over the file.
func TestRouterConfigIsolation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	if err := os.WriteFile(path, []byte("router:\n  shared_schema: \"\"\n  idle_in_transaction_timeout: 0s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file, _, err := loadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		shared string
		none   bool
		idle   time.Duration
	}{
		{nil, "", true, -1},
		{[]string{"--shared-schema", "ext", "--idle-in-transaction-timeout", "5m"}, "ext", false, 5 * time.Minute},
	} {
		cmd := newRouterCmd(&app{})
		if err := cmd.ParseFlags(tc.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := routerConfig(cmd, file.Router, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.SharedSchema != tc.shared || cfg.NoSharedSchema != tc.none || cfg.IdleInTransactionTimeout != tc.idle {
			t.Errorf("%v: shared %q none %v idle %s, want %q %v %s", tc.args, cfg.SharedSchema, cfg.NoSharedSchema, cfg.IdleInTransactionTimeout, tc.shared, tc.none, tc.idle)
		}
	}
}

// TestRouterConfigDDL: --ddl is warn by default, then flag > PGTENANT_DDL >
// the file's router.ddl.
func TestRouterConfigDDL(t *testing.T) {
	for _, c := range []struct {
		args      []string
		env, file string
		want      router.DDLMode
	}{
		{nil, "", "", router.DDLWarn},
		{nil, "", "allow", router.DDLAllow},
		{nil, "refuse", "allow", router.DDLRefuse},
		{[]string{"--ddl", "allow"}, "refuse", "warn", router.DDLAllow},
	} {
		t.Setenv("PGTENANT_DDL", c.env)
		cmd := newRouterCmd(&app{})
		if err := cmd.ParseFlags(c.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := routerConfig(cmd, RouterConfig{DDL: c.file}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.DDL != c.want {
			t.Errorf("args %v env %q file %q: ddl %q, want %q", c.args, c.env, c.file, cfg.DDL, c.want)
		}
	}
}
