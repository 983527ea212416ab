package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
)

// Config is pgtenant's config file. Every setting can also come from an
// environment variable and a flag; flags win over the environment, which
// wins over the file.
type Config struct {
	// Catalog is the catalog database's connection string (PGTENANT_CATALOG, --catalog).
	Catalog string `yaml:"catalog"`
	// Router configures `pgtenant router`.
	Router RouterConfig `yaml:"router"`
}

// RouterConfig is the router section of the config file.
type RouterConfig struct {
	// Listen is the client address; empty means 127.0.0.1:6432.
	Listen string `yaml:"listen"`
	// MetricsListen serves /metrics and /admin/; empty means off.
	MetricsListen string `yaml:"metrics_listen"`
	// Database is the database name clients must connect with; empty
	// means any name.
	Database string `yaml:"database"`
	// Auth is scram-sha-256 (empty), md5 or trust.
	Auth string `yaml:"auth"`
	// Users maps user names to passwords for client authentication.
	Users map[string]string `yaml:"users"`
	// PoolMode is transaction (empty) or session.
	PoolMode string `yaml:"pool_mode"`
	// PoolSize is the most backend connections per node; zero means 20.
	PoolSize int `yaml:"pool_size"`
	// TLSCert and TLSKey enable TLS for clients when both are set.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`

	// The rest mirror router.Config and router.PoolConfig; zero means the
	// flag's default. Durations are written as Go durations ("5m", "250ms").

	// PoolMinIdle backend connections per node are kept open.
	PoolMinIdle int `yaml:"pool_min_idle"`
	// PoolIdleTimeout closes backend connections unused this long; negative
	// means never.
	PoolIdleTimeout time.Duration `yaml:"pool_idle_timeout"`
	// PoolMaxLifetime retires backend connections this old; negative means
	// never.
	PoolMaxLifetime time.Duration `yaml:"pool_max_lifetime"`
	// PoolWaitTimeout bounds the wait for a free backend connection (then
	// 53300).
	PoolWaitTimeout time.Duration `yaml:"pool_wait_timeout"`
	// PoolConnectTimeout bounds opening one backend connection.
	PoolConnectTimeout time.Duration `yaml:"pool_connect_timeout"`
	// PoolCheckIdle: a backend connection idle longer than this is checked
	// before use; negative means never.
	PoolCheckIdle time.Duration `yaml:"pool_check_idle"`
	// MaxClients bounds concurrent client connections.
	MaxClients int `yaml:"max_clients"`
	// MaxMessage bounds one protocol message, in bytes.
	MaxMessage int `yaml:"max_message"`
	// MaxPrepared bounds the statements kept prepared on one backend
	// connection.
	MaxPrepared int `yaml:"max_prepared"`
	// StartupTimeout bounds connecting and authenticating a client.
	StartupTimeout time.Duration `yaml:"startup_timeout"`
	// ClientIdleTimeout closes clients idle outside a transaction this
	// long; zero means never.
	ClientIdleTimeout time.Duration `yaml:"client_idle_timeout"`
	// HoldTimeout bounds how long a transaction for a shard being moved is
	// held (then 40001).
	HoldTimeout time.Duration `yaml:"hold_timeout"`
	// ResetTenantAfterTransaction resets a client's session tenant after
	// each transaction on a shard (for apps whose pool reuses clients);
	// false keeps it for the session.
	ResetTenantAfterTransaction bool `yaml:"reset_tenant_after_transaction"`
}

// configSearch are the files read when no --config or PGTENANT_CONFIG is given.
var configSearch = []string{"pgtenant.yaml", filepath.Join(".pgtenant", "pgtenant.yaml")}

// loadConfig reads the config file named by --config, PGTENANT_CONFIG, or
// the first of configSearch that exists. No file is not an error.
func loadConfig(path string) (*Config, string, error) {
	cfg := &Config{}
	explicit := path != ""
	if !explicit {
		path = os.Getenv("PGTENANT_CONFIG")
		explicit = path != ""
	}
	if !explicit {
		for _, p := range configSearch {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		return cfg, "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("read config: %w", err)
	}
	if err := yaml.Unmarshal(b, cfg); err != nil {
		return nil, "", fmt.Errorf("parse config %s: %w", path, err)
	}
	return cfg, path, nil
}

// setting resolves one setting: the flag when given, else the environment
// variable, else the config file's value, else the flag's default.
// intSetting returns an int flag's value when it was given, else fromFile
// when set, else the flag's default.
func intSetting(cmd *cobra.Command, flag string, fromFile int) int {
	v, _ := cmd.Flags().GetInt(flag)
	if fromFile != 0 && !cmd.Flag(flag).Changed {
		return fromFile
	}
	return v
}

// durationSetting is intSetting for a duration flag.
func durationSetting(cmd *cobra.Command, flag string, fromFile time.Duration) time.Duration {
	v, _ := cmd.Flags().GetDuration(flag)
	if fromFile != 0 && !cmd.Flag(flag).Changed {
		return fromFile
	}
	return v
}

// boolSetting is intSetting for a bool flag: true in the file turns it on
// unless the flag was given.
func boolSetting(cmd *cobra.Command, flag string, fromFile bool) bool {
	v, _ := cmd.Flags().GetBool(flag)
	if fromFile && !cmd.Flag(flag).Changed {
		return true
	}
	return v
}

func setting(cmd *cobra.Command, flag, env, fromFile string) string {
	f := cmd.Flag(flag)
	if f != nil && f.Changed {
		return f.Value.String()
	}
	if v := os.Getenv(env); v != "" {
		return v
	}
	if fromFile != "" {
		return fromFile
	}
	if f != nil {
		return f.Value.String()
	}
	return ""
}
