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
	// LogLevel is debug, info, warn or error (--log-level); empty means
	// warn. The router rereads it on SIGHUP.
	LogLevel string `yaml:"log_level"`
	// LogFormat is text or json (--log-format); empty means text.
	LogFormat string `yaml:"log_format"`
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
	// DDL is what a schema change sent for a tenant gets: warn (empty),
	// refuse or allow.
	DDL string `yaml:"ddl"`
	// PoolSize is the most backend connections per node; zero means 20.
	PoolSize int `yaml:"pool_size"`
	// TLSCert and TLSKey enable TLS for clients when both are set.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
	// SecretsFile holds NAME=value lines that resolve $NAME references in
	// node DSNs before the environment does; empty means the environment only.
	SecretsFile string `yaml:"secrets_file"`

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
	// PoolCheckIdle: a backend connection idle at least this long is checked
	// before use; zero means at every use, negative never.
	PoolCheckIdle time.Duration `yaml:"pool_check_idle"`
	// MaxClients bounds concurrent client connections.
	MaxClients int `yaml:"max_clients"`
	// MaxMessage bounds one protocol message, in bytes.
	MaxMessage int `yaml:"max_message"`
	// MaxMessageMemory bounds the memory held at once for large client
	// messages, across all clients, in bytes; -1 means no bound.
	MaxMessageMemory int64 `yaml:"max_message_memory"`
	// MessageMemoryWait is how long a large message waits for that memory
	// (then 53200).
	MessageMemoryWait time.Duration `yaml:"message_memory_wait"`
	// TLSRequired refuses clients that do not use TLS (28000).
	TLSRequired bool `yaml:"tls_required"`
	// TLSRequiredUsers refuses these users when they do not use TLS.
	TLSRequiredUsers []string `yaml:"tls_required_users"`
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
	// ShutdownGrace bounds how long SIGTERM waits for running
	// transactions before the router exits; zero means 25s.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
	// UsageCapacity is the most tenants whose usage is counted; zero
	// means 1000, -1 turns counting off.
	UsageCapacity int `yaml:"usage_capacity"`
	// TenantCache is how many tenant lookups the router keeps in memory;
	// zero means catalog.DefaultTenantCache (200,000).
	TenantCache int `yaml:"tenant_cache"`
	// UsageTopK is how many of the busiest tenants are exported as
	// pgtenant_tenant_* metrics; zero means 20.
	UsageTopK int `yaml:"usage_top_k"`
	// UsageSampleBelow: transactions without an error that held a backend
	// less than this are counted by sampling (router.Config.UsageSampleBelow);
	// zero means 5ms, negative counts every transaction exactly.
	UsageSampleBelow time.Duration `yaml:"usage_sample_below"`
	// SharedSchema is searched after the shard's schema (extensions,
	// reference tables); nil means public, "" means none.
	SharedSchema *string `yaml:"shared_schema"`
	// IdleInTransactionTimeout ends clients idle inside a transaction this
	// long (25P03); nil means 60s, 0 means never.
	IdleInTransactionTimeout *time.Duration `yaml:"idle_in_transaction_timeout"`
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

// int64Setting is intSetting for an int64 flag.
func int64Setting(cmd *cobra.Command, flag string, fromFile int64) int64 {
	v, _ := cmd.Flags().GetInt64(flag)
	if fromFile != 0 && !cmd.Flag(flag).Changed {
		return fromFile
	}
	return v
}

// boolSetting is intSetting for a bool flag (the file can only turn it on).
func boolSetting(cmd *cobra.Command, flag string, fromFile bool) bool {
	v, _ := cmd.Flags().GetBool(flag)
	if fromFile && !cmd.Flag(flag).Changed {
		return true
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
