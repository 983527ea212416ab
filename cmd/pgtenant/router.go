package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/nodedsn"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
)

func newRouterCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "router",
		Short: "Run the Postgres wire-protocol router",
		Long: `Run the router: apps connect to it as to one Postgres database and name the
tenant; it runs each transaction on that tenant's shard, pooling backend
connections per node.

Naming the tenant, most specific first:
  /* tenant: acme */ SELECT ...                    a comment hint on a statement
  SET LOCAL pgtenant.tenant = 'acme'               for the current transaction
  SET pgtenant.tenant = 'acme'                     for the session
  SELECT set_config('pgtenant.tenant', $1, false)  the same, with a bind parameter
  options=-c pgtenant.tenant=acme                  at connect time (PGOPTIONS)

Schema changes (CREATE, ALTER, DROP, COMMENT ON, GRANT/REVOKE ON; not of
TEMP objects) sent for a tenant change that tenant's shard only: apply them to
every shard with 'pgtenant migrate up'. --ddl says what the router does with
one: warn (default: it runs, and the client gets a WARNING naming the shard),
refuse (SQLSTATE 0A000, nothing runs) or allow (it runs silently).

The router follows the catalog (LISTEN pgtenant_map), keeps serving from its
last map if the catalog goes away, and holds a shard's new transactions while
'shard move' fences it.

Settings come from flags, then the environment (for the seven flags that name
a variable), then the config file's section 'router:', whose keys are the flag
names with '_' for '-' (listen, metrics_listen, database, auth, pool_mode, ddl,
pool_size, pool_idle_timeout, max_clients, max_message_memory, tls_required,
shared_schema, idle_in_transaction_timeout, ...) plus users (name: password),
tls_cert/tls_key and tls_required_users (a list of user names that must use
TLS). Durations are Go durations: 250ms, 30s, 5m, 1h.

Memory: client messages larger than 128 KiB share --max-message-memory
(default 256 MiB) across all clients; one that finds no room within
--message-memory-wait is refused with SQLSTATE 53200 and the session goes on.

TLS: with tls_cert and tls_key, clients may use TLS, by SSLRequest or
directly (sslnegotiation=direct, PostgreSQL 17's way, with the ALPN protocol
postgresql), and SCRAM offers SCRAM-SHA-256-PLUS (channel binding,
tls-server-end-point) over it; --require-tls refuses clients without TLS
(SQLSTATE 28000), as pg_hba's hostssl does.`,
		Example: `  pgtenant router --listen 127.0.0.1:6432 --metrics-listen 127.0.0.1:9187
  psql "host=127.0.0.1 port=6432 user=app options='-c pgtenant.tenant=acme'"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return a.runRouter(cmd) },
	}
	cmd.Flags().String("listen", "127.0.0.1:6432", "client address (env PGTENANT_LISTEN)")
	cmd.Flags().String("metrics-listen", "", "address for /metrics and /admin/ (env PGTENANT_METRICS_LISTEN); empty = off")
	cmd.Flags().String("database", "", "database name clients must connect with (env PGTENANT_DATABASE); empty = any")
	cmd.Flags().String("auth", "scram-sha-256", "client authentication: scram-sha-256, md5 or trust (env PGTENANT_AUTH)")
	cmd.Flags().String("pool-mode", "transaction", "transaction or session (env PGTENANT_POOL_MODE)")
	cmd.Flags().String("ddl", "warn", "schema changes sent for a tenant (they change its shard only): warn, refuse (SQLSTATE 0A000) or allow (env PGTENANT_DDL)")
	cmd.Flags().Int("pool-size", 20, "most backend connections per node")
	cmd.Flags().Int("pool-min-idle", 0, "backend connections per node kept open while unused")
	cmd.Flags().Duration("pool-idle-timeout", 5*time.Minute, "close backend connections unused this long (negative: never)")
	cmd.Flags().Duration("pool-max-lifetime", time.Hour, "retire backend connections this old (negative: never)")
	cmd.Flags().Duration("pool-wait-timeout", 5*time.Second, "longest wait for a free backend connection when a node's pool is full (then SQLSTATE 53300)")
	cmd.Flags().Duration("pool-connect-timeout", 5*time.Second, "longest time to open one backend connection")
	cmd.Flags().Duration("pool-check-idle", 0, "check a backend connection idle at least this long before use (0: at every use, negative: never)")
	cmd.Flags().Int("max-clients", 1000, "most concurrent client connections (more get SQLSTATE 53300)")
	cmd.Flags().Int("max-message", 64<<20, "largest protocol message from a client or server, in bytes")
	cmd.Flags().Int64("max-message-memory", router.DefaultMaxMessageMemory, "most bytes held at once for client messages over 128 KiB, across all clients (-1: no bound)")
	cmd.Flags().Duration("message-memory-wait", 10*time.Second, "longest wait of a large client message for --max-message-memory (then SQLSTATE 53200)")
	cmd.Flags().Bool("require-tls", false, "refuse clients that do not use TLS (SQLSTATE 28000); needs tls_cert and tls_key in the config file")
	cmd.Flags().Int("max-prepared", 1000, "most statements kept prepared on one backend connection")
	cmd.Flags().Duration("startup-timeout", 10*time.Second, "longest time for a client to connect and authenticate")
	cmd.Flags().Duration("client-idle-timeout", 0, "close clients idle outside a transaction this long (0: never)")
	cmd.Flags().String("secrets-file", "", "file of NAME=value lines resolving $NAME in node DSNs, before the environment (env PGTENANT_SECRETS_FILE; mode 0600)")
	cmd.Flags().Duration("hold-timeout", 10*time.Second, "longest hold of a transaction for a shard being moved (then SQLSTATE 40001)")
	addLifecycleFlags(cmd)
	cmd.Flags().Int("tenant-cache", catalog.DefaultTenantCache, "tenant lookups kept in memory (registered or not; invalidated by the catalog's notifications; config: tenant_cache)")
	cmd.Flags().String("shared-schema", "public", "schema searched after the shard's (search_path: shard, this, pg_temp); empty = none")
	cmd.Flags().Duration("idle-in-transaction-timeout", router.DefaultIdleInTransactionTimeout, "end clients idle inside a transaction, or with extended-protocol work not yet ended by a Sync, this long (SQLSTATE 25P03, rolled back; 0: never)")
	cmd.Flags().Bool("reset-tenant-after-transaction", false, "reset a client's session tenant (SET pgtenant.tenant) after each transaction on a shard, for apps whose pool reuses clients")
	return cmd
}

// routerConfig builds the router's configuration from cmd's flags, the
// environment and the config file's router section rc, and checks it.
func routerConfig(cmd *cobra.Command, rc RouterConfig, logger *slog.Logger) (router.Config, error) {
	cfg := router.Config{
		Listen:   setting(cmd, "listen", "PGTENANT_LISTEN", rc.Listen),
		Auth:     router.AuthMethod(setting(cmd, "auth", "PGTENANT_AUTH", rc.Auth)),
		PoolMode: router.PoolMode(setting(cmd, "pool-mode", "PGTENANT_POOL_MODE", rc.PoolMode)),
		DDL:      router.DDLMode(setting(cmd, "ddl", "PGTENANT_DDL", rc.DDL)),
		Users:    rc.Users,
		Database: setting(cmd, "database", "PGTENANT_DATABASE", rc.Database),
		Logger:   logger,
	}
	switch cfg.Auth {
	case router.AuthSCRAM, router.AuthMD5, router.AuthTrust:
	default:
		return router.Config{}, usagef("auth %q: use scram-sha-256, md5 or trust", cfg.Auth)
	}
	switch cfg.PoolMode {
	case router.PoolTransaction, router.PoolSession:
	default:
		return router.Config{}, usagef("pool mode %q: use transaction or session", cfg.PoolMode)
	}
	switch cfg.DDL {
	case router.DDLWarn, router.DDLRefuse, router.DDLAllow:
	default:
		return router.Config{}, usagef("ddl %q: use warn, refuse or allow", cfg.DDL)
	}
	cfg.Pool = router.PoolConfig{
		MaxSize:        intSetting(cmd, "pool-size", rc.PoolSize),
		MinIdle:        intSetting(cmd, "pool-min-idle", rc.PoolMinIdle),
		IdleTimeout:    durationSetting(cmd, "pool-idle-timeout", rc.PoolIdleTimeout),
		MaxLifetime:    durationSetting(cmd, "pool-max-lifetime", rc.PoolMaxLifetime),
		WaitTimeout:    durationSetting(cmd, "pool-wait-timeout", rc.PoolWaitTimeout),
		ConnectTimeout: durationSetting(cmd, "pool-connect-timeout", rc.PoolConnectTimeout),
		CheckIdle:      durationSetting(cmd, "pool-check-idle", rc.PoolCheckIdle),
	}
	cfg.MaxClients = intSetting(cmd, "max-clients", rc.MaxClients)
	cfg.MaxMessage = intSetting(cmd, "max-message", rc.MaxMessage)
	cfg.MaxPrepared = intSetting(cmd, "max-prepared", rc.MaxPrepared)
	cfg.MaxMessageMemory = int64Setting(cmd, "max-message-memory", rc.MaxMessageMemory)
	cfg.MessageMemoryWait = durationSetting(cmd, "message-memory-wait", rc.MessageMemoryWait)
	cfg.RequireTLS = boolSetting(cmd, "require-tls", rc.TLSRequired)
	cfg.RequireTLSUsers = rc.TLSRequiredUsers
	cfg.StartupTimeout = durationSetting(cmd, "startup-timeout", rc.StartupTimeout)
	cfg.ClientIdleTimeout = durationSetting(cmd, "client-idle-timeout", rc.ClientIdleTimeout)
	cfg.HoldTimeout = durationSetting(cmd, "hold-timeout", rc.HoldTimeout)
	shared, _ := cmd.Flags().GetString("shared-schema")
	if rc.SharedSchema != nil && !cmd.Flag("shared-schema").Changed {
		shared = *rc.SharedSchema
	}
	cfg.SharedSchema, cfg.NoSharedSchema = shared, shared == ""
	idleTxn, _ := cmd.Flags().GetDuration("idle-in-transaction-timeout")
	if rc.IdleInTransactionTimeout != nil && !cmd.Flag("idle-in-transaction-timeout").Changed {
		idleTxn = *rc.IdleInTransactionTimeout
	}
	switch {
	case idleTxn < 0:
		return router.Config{}, usagef("idle-in-transaction-timeout %s: need 0 (never) or a positive duration", idleTxn)
	case idleTxn == 0:
		cfg.IdleInTransactionTimeout = -1 // never
	default:
		cfg.IdleInTransactionTimeout = idleTxn
	}
	cfg.ResetTenantAfterTransaction = boolSetting(cmd, "reset-tenant-after-transaction", rc.ResetTenantAfterTransaction)
	p := cfg.Pool
	switch {
	case p.MaxSize <= 0:
		return router.Config{}, usagef("pool-size %d: need at least 1", p.MaxSize)
	case p.MinIdle < 0 || p.MinIdle > p.MaxSize:
		return router.Config{}, usagef("pool-min-idle %d: need 0 to pool-size (%d)", p.MinIdle, p.MaxSize)
	case p.WaitTimeout <= 0:
		return router.Config{}, usagef("pool-wait-timeout %s: need a positive duration", p.WaitTimeout)
	case p.ConnectTimeout <= 0:
		return router.Config{}, usagef("pool-connect-timeout %s: need a positive duration", p.ConnectTimeout)
	case cfg.MaxClients <= 0:
		return router.Config{}, usagef("max-clients %d: need at least 1", cfg.MaxClients)
	case cfg.MaxMessage < 1<<10:
		return router.Config{}, usagef("max-message %d: need at least 1024 bytes", cfg.MaxMessage)
	case cfg.MaxMessageMemory == 0 || cfg.MaxMessageMemory < -1:
		return router.Config{}, usagef("max-message-memory %d: need a number of bytes, or -1 for no bound", cfg.MaxMessageMemory)
	case cfg.MaxMessageMemory > 0 && cfg.MaxMessageMemory < int64(cfg.MaxMessage):
		return router.Config{}, usagef("max-message-memory %d: need at least max-message (%d), or -1 for no bound", cfg.MaxMessageMemory, cfg.MaxMessage)
	case cfg.MessageMemoryWait <= 0:
		return router.Config{}, usagef("message-memory-wait %s: need a positive duration", cfg.MessageMemoryWait)
	case cfg.MaxPrepared < 16:
		return router.Config{}, usagef("max-prepared %d: need at least 16", cfg.MaxPrepared)
	case cfg.StartupTimeout <= 0:
		return router.Config{}, usagef("startup-timeout %s: need a positive duration", cfg.StartupTimeout)
	case cfg.ClientIdleTimeout < 0:
		return router.Config{}, usagef("client-idle-timeout %s: need 0 (never) or a positive duration", cfg.ClientIdleTimeout)
	case cfg.HoldTimeout <= 0:
		return router.Config{}, usagef("hold-timeout %s: need a positive duration", cfg.HoldTimeout)
	}
	if err := opsSettings(cmd, rc, &cfg); err != nil {
		return router.Config{}, err
	}
	if rc.TLSCert != "" && rc.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(rc.TLSCert, rc.TLSKey)
		if err != nil {
			return router.Config{}, fmt.Errorf("load TLS certificate: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	if (cfg.RequireTLS || len(cfg.RequireTLSUsers) > 0) && cfg.TLS == nil {
		return router.Config{}, usagef("require-tls (or tls_required_users) needs TLS: set tls_cert and tls_key in the config file's router section")
	}
	return cfg, nil
}

func (a *app) runRouter(cmd *cobra.Command) error {
	ctx := cmd.Context()
	cfg, err := routerConfig(cmd, a.cfg.Router, a.logger)
	if err != nil {
		return err
	}
	cat, err := a.openCatalog(cmd)
	if err != nil {
		return err
	}
	defer cat.Close()
	cat.SetTenantCache(intSetting(cmd, "tenant-cache", a.cfg.Router.TenantCache))
	if path := setting(cmd, "secrets-file", "PGTENANT_SECRETS_FILE", a.cfg.Router.SecretsFile); path != "" {
		secrets, err := nodedsn.LoadFile(path)
		if err != nil {
			return err
		}
		cat.SetSecrets(nodedsn.Chain(secrets, nodedsn.Env()))
	}
	// Catalog users and how their transactions run, reloaded with every map
	// change (their table notifies too).
	type userEntry struct {
		cred   router.Credential
		access router.UserAccess
	}
	type userSet struct {
		byName  map[string]userEntry
		runtime string // the runtime role, for users without one of their own
	}
	var users atomic.Pointer[userSet]
	loadUsers := func(ctx context.Context) error {
		list, err := cat.Users(ctx)
		if err != nil {
			return err
		}
		runtime, err := cat.Meta(ctx, access.MetaRuntimeRole)
		if err != nil {
			return err
		}
		us := &userSet{byName: make(map[string]userEntry, len(list)), runtime: runtime}
		for _, u := range list {
			e := userEntry{cred: router.Credential{SCRAM: u.SCRAM, MD5: u.MD5}, access: router.UserAccess{Role: u.Role, Tenant: u.Tenant}}
			switch {
			case u.Tenant != "" && u.Shard >= 0:
				e.access.Role = access.RestrictedRole(u.Shard)
			case u.Tenant != "":
				e.access.Role = "" // tenant not registered: the router refuses the login
			case u.Role == "":
				e.access.Role = runtime
			}
			us.byName[u.Name] = e
		}
		users.Store(us)
		return nil
	}
	if err := loadUsers(ctx); err != nil {
		return err
	}
	if cfg.Auth != router.AuthTrust && len(cfg.Users) == 0 && len(users.Load().byName) == 0 {
		fmt.Fprintf(a.stderr, "warning: auth %s and no users yet: add one with `pgtenant user add NAME` (or 'router: users:' in the config file)\n", cfg.Auth)
	}
	// Config file users come first; SIGHUP replaces them (see reloadRouter).
	var fileUsers atomic.Pointer[configUsers]
	fu, err := newConfigUsers(cfg.Users)
	if err != nil {
		return err
	}
	fileUsers.Store(fu)
	cfg.Users = nil
	cfg.Credentials = func(user string) (router.Credential, bool) {
		if c, ok := fileUsers.Load().creds[user]; ok {
			return c, true
		}
		e, ok := users.Load().byName[user]
		return e.cred, ok
	}
	cfg.Access = func(user string) router.UserAccess {
		us := users.Load()
		if _, inFile := fileUsers.Load().creds[user]; !inFile {
			if e, ok := us.byName[user]; ok {
				return e.access
			}
		}
		return router.UserAccess{Role: us.runtime}
	}
	srv := router.New(cfg)
	if err := srv.Open(ctx); err != nil {
		return err
	}
	addr := srv.Addr().String()
	id := routerID(addr)
	// Register (acked version 0) before loading the map and serving: a mover
	// that fences a shard from now on waits for this router's ack, and one
	// that fenced before saw its fence in the map loaded below. Loading first
	// would leave a window where this router serves a map older than a fence
	// that no mover waits for.
	if err := cat.Heartbeat(ctx, id, addr, 0); err != nil {
		return err
	}
	m, err := cat.LoadMap(ctx)
	if err != nil {
		return err
	}
	if err := srv.SetMap(ctx, m); err != nil {
		return err
	}
	a.logger.Info("router listening", "addr", addr, "router", id, "map_version", m.Version)
	fmt.Fprintf(a.stdout, "router listening on %s (map version %d, %s)\n", addr, m.Version, plural(len(m.Shards), "shard"))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() {
		errc <- cat.Follow(ctx, id, addr, time.Second, func(ctx context.Context, m *placement.Map) error {
			// The users are read while the map is applied (a fence's
			// acknowledgement waits for both, not one after the other).
			users := make(chan error, 1)
			go func() { users <- loadUsers(ctx) }()
			err := srv.SetMap(ctx, m)
			if uerr := <-users; uerr != nil && ctx.Err() == nil {
				a.logger.Warn("reload router users; keeping the previous ones", "err", uerr)
			}
			return err
		})
	}()
	if ml := setting(cmd, "metrics-listen", "PGTENANT_METRICS_LISTEN", a.cfg.Router.MetricsListen); ml != "" {
		// /readyz tells whether the catalog answers or the last map is served.
		mux := srv.HTTPHandler(func(ctx context.Context) error { return cat.Pool().Ping(ctx) })
		hs := &http.Server{Addr: ml, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", ml)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
		defer hs.Close()
		if err := cat.SetRouterAdminURL(ctx, id, adminURL(ln.Addr())); err != nil {
			a.logger.Warn("record this router's admin URL; `tenant top` will not find it", "err", err)
		}
		fmt.Fprintf(a.stdout, "metrics on http://%s/metrics, health on /healthz and /readyz, admin on http://%s/admin/\n", ln.Addr(), ln.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	return a.supervise(ctx, cancel, &routerRun{cmd: cmd, srv: srv, users: &fileUsers}, served, errc)
}

// routerID names this router process in the catalog.
func routerID(addr string) string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/%s/%d/%s", host, addr, os.Getpid(), hex.EncodeToString(b))
}
