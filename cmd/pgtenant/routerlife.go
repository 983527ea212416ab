package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/router"
	"github.com/pgtenant/pgtenant/internal/wire"
)

// defaultShutdownGrace lets a drain finish inside Kubernetes' default
// terminationGracePeriodSeconds (30 s) with time to spare.
const defaultShutdownGrace = 25 * time.Second

// addLifecycleFlags adds the shutdown flag and the signals' help to the
// router command.
func addLifecycleFlags(cmd *cobra.Command) {
	cmd.Long += `

Signals: SIGHUP rereads the config file and applies pool sizes and limits,
max_clients, users and log_level without dropping clients, printing what
changed. SIGTERM drains: running transactions have --shutdown-grace to
finish; new clients and new transactions get SQLSTATE 57P01; then the router
exits (a second SIGTERM exits at once). With --metrics-listen: /healthz,
/readyz, /metrics and /admin/.`
	cmd.Flags().Duration("shutdown-grace", defaultShutdownGrace, "on SIGTERM, how long running transactions may go on before the router exits (config: shutdown_grace)")
	cmd.Flags().Int("usage-capacity", 1000, "most tenants whose usage the router counts (space-saving sketch; -1: off; config: usage_capacity)")
	cmd.Flags().Int("usage-top-k", 20, "busiest tenants exported as pgtenant_tenant_* metrics (config: usage_top_k)")
	cmd.Flags().Duration("usage-sample-below", 0, "transactions without an error that held a backend less than this are counted by sampling, as unbiased estimates (a busy router: 5ms); 0: every transaction exactly (config: usage_sample_below)")
}

// opsSettings sets the router settings of this file's flags.
func opsSettings(cmd *cobra.Command, rc RouterConfig, cfg *router.Config) error {
	cfg.UsageCapacity = intSetting(cmd, "usage-capacity", rc.UsageCapacity)
	cfg.UsageTopK = intSetting(cmd, "usage-top-k", rc.UsageTopK)
	cfg.UsageSampleBelow = durationSetting(cmd, "usage-sample-below", rc.UsageSampleBelow)
	if cfg.UsageCapacity == 0 || cfg.UsageCapacity < -1 {
		return usagef("usage-capacity %d: need -1 (off) or at least 1", cfg.UsageCapacity)
	}
	if cfg.UsageTopK <= 0 {
		return usagef("usage-top-k %d: need at least 1", cfg.UsageTopK)
	}
	return nil
}

// adminURL is the base URL at which a listener on addr is reached: an
// unspecified host (0.0.0.0, ::) is replaced by this machine's name.
func adminURL(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return "http://" + addr.String()
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// configUsers holds the config file's router users as stored credentials,
// so that SIGHUP can replace them while clients log in.
type configUsers struct {
	plain map[string]string
	creds map[string]router.Credential
}

// newConfigUsers hashes the config file's passwords the way the catalog
// stores them (SCRAM verifier and md5 hash).
func newConfigUsers(users map[string]string) (*configUsers, error) {
	cu := &configUsers{plain: users, creds: make(map[string]router.Credential, len(users))}
	for name, pw := range users {
		v, err := wire.SCRAMVerifier(pw, 4096)
		if err != nil {
			return nil, fmt.Errorf("router user %q: %w", name, err)
		}
		cu.creds[name] = router.Credential{SCRAM: v, MD5: wire.MD5Hash(name, pw)}
	}
	return cu, nil
}

// diff describes how the users in next differ from cu's, without passwords.
func (cu *configUsers) diff(next *configUsers) []string {
	var added, removed, changed []string
	for n, pw := range next.plain {
		old, ok := cu.plain[n]
		switch {
		case !ok:
			added = append(added, n)
		case old != pw:
			changed = append(changed, n)
		}
	}
	for n := range cu.plain {
		if _, ok := next.plain[n]; !ok {
			removed = append(removed, n)
		}
	}
	var out []string
	for _, x := range []struct {
		what  string
		names []string
	}{{"users added", added}, {"users removed", removed}, {"passwords changed", changed}} {
		if len(x.names) > 0 {
			sort.Strings(x.names)
			out = append(out, x.what+": "+strings.Join(x.names, ", "))
		}
	}
	return out
}

// routerRun is a running router's state the signal handlers work on.
type routerRun struct {
	cmd   *cobra.Command
	srv   *router.Server
	users *atomic.Pointer[configUsers]
}

// supervise waits for the router to end: SIGHUP reloads the config file,
// SIGINT/SIGTERM drain (running transactions finish within the grace, new
// clients and transactions get 57P01) and then stop the router; a second
// SIGINT/SIGTERM stops it at once. served receives Serve's result, errc
// the other goroutines' failures.
func (a *app) supervise(ctx context.Context, cancel context.CancelFunc, r *routerRun, served, errc <-chan error) error {
	sigc := make(chan os.Signal, 4)
	h := func(s os.Signal) {
		select {
		case sigc <- s:
		default:
		}
	}
	a.onSignal.Store(&h)
	defer a.onSignal.Store(nil)
	stop := func(err error) error {
		cancel()
		if serr := <-served; err == nil {
			err = serr
		}
		return err
	}
	var drained chan int
	for {
		select {
		case <-ctx.Done():
			return stop(nil)
		case err := <-served:
			cancel()
			return err
		case err := <-errc:
			return stop(err)
		case n := <-drained:
			grace := durationSetting(r.cmd, "shutdown-grace", a.cfg.Router.ShutdownGrace)
			if n > 0 {
				fmt.Fprintf(a.stdout, "router stopping: %d transactions still running after %s are cut\n", n, grace)
			} else {
				fmt.Fprintln(a.stdout, "router stopping: drained")
			}
			return stop(nil)
		case sig := <-sigc:
			switch {
			case sig == syscall.SIGHUP:
				a.reloadRouter(r)
			case drained != nil:
				a.logger.Warn("second stop signal: stopping without waiting", "signal", sig.String())
				return stop(nil)
			default:
				grace := durationSetting(r.cmd, "shutdown-grace", a.cfg.Router.ShutdownGrace)
				a.logger.Info("draining", "signal", sig.String(), "grace", grace)
				fmt.Fprintf(a.stdout, "router draining (%s): running transactions have %s to finish; new ones get SQLSTATE 57P01\n", sig, grace)
				drained = make(chan int, 1)
				go func() { drained <- r.srv.Drain(ctx, grace) }()
			}
		}
	}
}

// reloadRouter rereads the config file and applies what can change while
// the router runs: pool sizes and limits, max_clients, the users of the
// config file, and the log level. It logs and prints what changed, and
// what changed but needs a restart. A config that fails to load or check
// changes nothing.
func (a *app) reloadRouter(r *routerRun) {
	file, path, err := loadConfig(a.configPath)
	if err == nil && path == "" {
		err = fmt.Errorf("no config file found (give --config)")
	}
	var next router.Config
	if err == nil {
		next, err = routerConfig(r.cmd, file.Router, a.logger)
	}
	var users *configUsers
	if err == nil {
		users, err = newConfigUsers(next.Users)
	}
	var level = a.level.Level()
	if err == nil {
		if f := r.cmd.Flag("log-level"); f == nil || !f.Changed {
			name := file.LogLevel
			if name == "" {
				name = "warn"
			}
			level, err = parseLevel(name)
		}
	}
	if err != nil {
		a.logger.Error("config reload failed; keeping the current settings", "err", err)
		fmt.Fprintf(a.stdout, "config reload failed; keeping the current settings: %v\n", err)
		return
	}
	next.Users = nil // served through Credentials, from r.users
	changed, fixed := r.srv.Reload(next)
	changed = append(changed, r.users.Load().diff(users)...)
	r.users.Store(users)
	if old := a.level.Level(); old != level {
		changed = append(changed, fmt.Sprintf("log_level: %s -> %s", old, level))
		a.level.Set(level)
	}
	a.cfg.Router.ShutdownGrace = file.Router.ShutdownGrace
	a.logger.Info("config reloaded", "file", path, "changed", changed, "restart_needed", fixed)
	if len(changed) == 0 {
		changed = []string{"nothing changed"}
	}
	fmt.Fprintf(a.stdout, "config reloaded from %s: %s\n", path, strings.Join(changed, "; "))
	if len(fixed) > 0 {
		a.logger.Warn("settings changed in the config file take effect after a restart", "settings", fixed)
		fmt.Fprintf(a.stdout, "changed but applied only after a restart: %s\n", strings.Join(fixed, "; "))
	}
}
