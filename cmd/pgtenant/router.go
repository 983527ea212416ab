package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

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

The router follows the catalog (LISTEN pgtenant_map), keeps serving from its
last map if the catalog goes away, and holds a shard's new transactions while
'shard move' fences it.

Settings (config file section 'router:', env, flags): listen, metrics_listen,
database (the name clients connect with; empty accepts any), auth
(scram-sha-256, md5, trust), users (name: password), pool_mode (transaction,
session), pool_size, tls_cert/tls_key.`,
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
	cmd.Flags().Int("pool-size", 20, "most backend connections per node")
	return cmd
}

func (a *app) runRouter(cmd *cobra.Command) error {
	ctx := cmd.Context()
	rc := a.cfg.Router
	cfg := router.Config{
		Listen:   setting(cmd, "listen", "PGTENANT_LISTEN", rc.Listen),
		Auth:     router.AuthMethod(setting(cmd, "auth", "PGTENANT_AUTH", rc.Auth)),
		PoolMode: router.PoolMode(setting(cmd, "pool-mode", "PGTENANT_POOL_MODE", rc.PoolMode)),
		Users:    rc.Users,
		Database: setting(cmd, "database", "PGTENANT_DATABASE", rc.Database),
		Logger:   a.logger,
	}
	switch cfg.Auth {
	case router.AuthSCRAM, router.AuthMD5, router.AuthTrust:
	default:
		return usagef("auth %q: use scram-sha-256, md5 or trust", cfg.Auth)
	}
	switch cfg.PoolMode {
	case router.PoolTransaction, router.PoolSession:
	default:
		return usagef("pool mode %q: use transaction or session", cfg.PoolMode)
	}
	cfg.Pool.MaxSize = rc.PoolSize
	if f := cmd.Flag("pool-size"); f.Changed || rc.PoolSize == 0 {
		fmt.Sscan(f.Value.String(), &cfg.Pool.MaxSize)
	}
	if rc.TLSCert != "" && rc.TLSKey != "" {
		cert, err := tls.LoadX509KeyPair(rc.TLSCert, rc.TLSKey)
		if err != nil {
			return fmt.Errorf("load TLS certificate: %w", err)
		}
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	cat, err := a.openCatalog(cmd)
	if err != nil {
		return err
	}
	defer cat.Close()
	// Catalog users, reloaded with every map change (their table notifies too).
	var users atomic.Pointer[map[string]router.Credential]
	loadUsers := func(ctx context.Context) error {
		list, err := cat.Users(ctx)
		if err != nil {
			return err
		}
		byName := make(map[string]router.Credential, len(list))
		for _, u := range list {
			byName[u.Name] = router.Credential{SCRAM: u.SCRAM, MD5: u.MD5}
		}
		users.Store(&byName)
		return nil
	}
	if err := loadUsers(ctx); err != nil {
		return err
	}
	if cfg.Auth != router.AuthTrust && len(cfg.Users) == 0 && len(*users.Load()) == 0 {
		fmt.Fprintf(a.stderr, "warning: auth %s and no users yet: add one with `pgtenant user add NAME` (or 'router: users:' in the config file)\n", cfg.Auth)
	}
	cfg.Credentials = func(user string) (router.Credential, bool) {
		c, ok := (*users.Load())[user]
		return c, ok
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
	fmt.Fprintf(a.stdout, "router listening on %s (map version %d, %d tenants)\n", addr, m.Version, len(m.Tenants))

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 3)
	go func() {
		errc <- cat.Follow(ctx, id, addr, time.Second, func(ctx context.Context, m *placement.Map) error {
			if err := loadUsers(ctx); err != nil {
				a.logger.Warn("reload router users; keeping the previous ones", "err", err)
			}
			return srv.SetMap(ctx, m)
		})
	}()
	if ml := setting(cmd, "metrics-listen", "PGTENANT_METRICS_LISTEN", rc.MetricsListen); ml != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", srv.Metrics().Handler())
		mux.Handle("/admin/", srv.AdminHandler())
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
		fmt.Fprintf(a.stdout, "metrics on http://%s/metrics, admin on http://%s/admin/\n", ln.Addr(), ln.Addr())
	}
	go func() { errc <- srv.Serve(ctx) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	return err
}

// routerID names this router process in the catalog.
func routerID(addr string) string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("%s/%s/%d/%s", host, addr, os.Getpid(), hex.EncodeToString(b))
}
