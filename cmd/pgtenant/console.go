package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/console"
)

// defaultConsoleListen is loopback: only this machine's users reach it.
const defaultConsoleListen = "127.0.0.1:8432"

func newConsoleCmd(a *app) *cobra.Command {
	var listen, user, passwordFile, certFile, keyFile, migrations string
	var sizeTTL time.Duration
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Serve the read-only web console",
		Long: `Serve the web console: the shard map (a grid of shards coloured by node and
shaded by size, fenced and moving shards marked), the nodes with their health
(cache and index hit rates, connections, longest transaction, replication
slots, database size, disk, dead tuples, from Postgres' statistics views),
the moves with their progress (the overview reloads every second), the
busiest tenants over every router, where the shards stand against the
migrations, the operation log, and the routers with the map version each
applied. It reads the catalog
(from --catalog, PGTENANT_CATALOG or the config file), the nodes (sizes, at
most every --size-ttl) and the routers' admin endpoints; it changes nothing.

What protects it: it listens on 127.0.0.1 by default, so only users of this
machine reach it (use an SSH tunnel from elsewhere). On any other address it
requires both --auth-user with --auth-password-file (HTTP basic auth) and
--tls-cert with --tls-key, so neither the password nor the pages (node
addresses, tenant ids, the operation log) cross the network in clear. Basic
auth may also be used on loopback, with or without TLS.`,
		Example: `  pgtenant console
  pgtenant console --listen 127.0.0.1:9000
  pgtenant console --listen 0.0.0.0:8432 --auth-user ops --auth-password-file /etc/pgtenant/console.pw \
      --tls-cert console.crt --tls-key console.key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if (user == "") != (passwordFile == "") {
				return usagef("--auth-user and --auth-password-file go together")
			}
			if (certFile == "") != (keyFile == "") {
				return usagef("--tls-cert and --tls-key go together")
			}
			if err := console.CheckListen(listen, user != "", certFile != ""); err != nil {
				return usageError{err}
			}
			var password string
			if passwordFile != "" {
				b, err := os.ReadFile(passwordFile)
				if err != nil {
					return fmt.Errorf("read the console password: %w", err)
				}
				password = strings.TrimRight(string(b), "\r\n")
				if password == "" {
					return fmt.Errorf("the console password file %s is empty", passwordFile)
				}
			}
			var tlsConfig *tls.Config
			if certFile != "" {
				cert, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("load the console's TLS certificate: %w", err)
				}
				tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
			}
			c, err := a.openCatalog(cmd)
			if err != nil {
				return err
			}
			defer c.Close()
			con, err := console.New(console.Config{Catalog: c, Logger: a.logger, SizeTTL: sizeTTL, MigrationsDir: migrations, Health: console.NodeHealth})
			if err != nil {
				return err
			}
			var h http.Handler = con
			if user != "" {
				h = console.BasicAuth(h, user, password)
			}
			return a.serveConsole(cmd.Context(), listen, h, tlsConfig)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", defaultConsoleListen, "address to serve on (host:port); other than loopback it needs --auth-user and --tls-cert")
	cmd.Flags().StringVar(&user, "auth-user", "", "require HTTP basic auth as this user")
	cmd.Flags().StringVar(&passwordFile, "auth-password-file", "", "file holding the basic-auth password (one line)")
	cmd.Flags().StringVar(&certFile, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	cmd.Flags().StringVar(&keyFile, "tls-key", "", "the certificate's private key (PEM)")
	cmd.Flags().StringVar(&migrations, "migrations-dir", "", "compare the shards with this migrations directory (default: the one 'migrate up' recorded)")
	cmd.Flags().DurationVar(&sizeTTL, "size-ttl", 10*time.Second, "read shard sizes and node reachability at most this often")
	return cmd
}

// serveConsole serves h on listen until ctx ends, then shuts down.
func (a *app) serveConsole(ctx context.Context, listen string, h http.Handler, tlsConfig *tls.Config) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	fmt.Fprintf(a.stdout, "console: %s://%s/ (read-only; Ctrl-C stops it)\n", scheme, ln.Addr())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("console: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("console shutdown: %w", err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("console: %w", err)
	}
	return nil
}
