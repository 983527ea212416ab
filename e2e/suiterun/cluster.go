package suiterun

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// Cluster is a local cluster (package devcluster) that a suite's routers
// serve.
type Cluster struct {
	*devcluster.Cluster
}

// StartCluster starts a local cluster of nodes servers and shards shards
// in dir, after removing one that an earlier run left there. The directory
// is made enterable by every user (see WorkDir).
func StartCluster(ctx context.Context, dir string, nodes, shards int) (*Cluster, error) {
	if _, err := os.Stat(dir); err == nil {
		devcluster.Down(ctx, dir, true)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make the cluster's directory: %w", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make the cluster's directory enterable: %w", err)
	}
	dcl, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: nodes, Shards: shards})
	if err != nil {
		devcluster.Down(context.Background(), dir, true)
		return nil, fmt.Errorf("dev up: %w", err)
	}
	return &Cluster{Cluster: dcl}, nil
}

// Down stops the cluster and removes it.
func (cl *Cluster) Down() {
	devcluster.Down(context.Background(), cl.Dir, true)
}

// Catalog opens the cluster's catalog; the caller closes it.
func (cl *Cluster) Catalog(ctx context.Context) (*catalog.Catalog, error) {
	cat := catalog.New(cl.CatalogDSN, slog.New(slog.DiscardHandler))
	if err := cat.Open(ctx); err != nil {
		return nil, fmt.Errorf("open the catalog: %w", err)
	}
	return cat, nil
}

// AddTenants registers each tenant of shards in its shard.
func (cl *Cluster) AddTenants(ctx context.Context, shards map[string]int) error {
	cat, err := cl.Catalog(ctx)
	if err != nil {
		return err
	}
	defer cat.Close()
	for id, shard := range shards {
		if _, err := cat.AddTenant(ctx, id, &shard); err != nil {
			return fmt.Errorf("add tenant %s: %w", id, err)
		}
	}
	return nil
}

// Router is a running `pgtenant router`.
type Router struct {
	// Addr and Metrics are where it listens for clients and serves
	// /metrics (loopback, free ports).
	Addr, Metrics string
	// Log is the file its output goes to.
	Log  string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// StartRouter starts `bin router args...` listening on free loopback ports
// (--listen, --metrics-listen), its output in the file logPath, and waits
// until it accepts connections.
func StartRouter(ctx context.Context, bin, logPath string, args ...string) (*Router, error) {
	port, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	mport, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	r := &Router{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		Metrics: net.JoinHostPort("127.0.0.1", strconv.Itoa(mport)), Log: logPath}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args = append(append([]string{"router"}, args...), "--listen", r.Addr, "--metrics-listen", r.Metrics)
	r.cmd = exec.Command(bin, args...)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	exited, err := proclife.Start(r.cmd, syscall.SIGKILL) // dies with the suite, even a killed one
	if err != nil {
		return nil, fmt.Errorf("start router: %w", err)
	}
	r.done = make(chan struct{})
	go func() { <-exited; close(r.done) }()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", r.Addr, time.Second); err == nil {
			c.Close()
			return r, nil
		}
	}
	r.Stop()
	return nil, fmt.Errorf("router did not listen on %s (log in %s)", r.Addr, r.Log)
}

// Port is the port the router listens on for clients.
func (r *Router) Port() int {
	_, p, _ := net.SplitHostPort(r.Addr)
	n, _ := strconv.Atoi(p)
	return n
}

// Stop stops the router (SIGTERM; SIGKILL if it has not ended 15 s later).
// Stopping a stopped router does nothing.
func (r *Router) Stop() {
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		r.cmd.Process.Kill()
		<-r.done
	}
}

// Exec runs each statement, in turn, on a connection to dsn; what says what
// they are for, in the error.
func Exec(ctx context.Context, dsn, what string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer conn.Close(ctx)
	for _, q := range stmts {
		if _, err := conn.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %s: %w", what, q, err)
		}
	}
	return nil
}
