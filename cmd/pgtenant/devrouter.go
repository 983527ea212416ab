package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// startDevRouter runs `pgtenant router` for the local cluster in dir as a
// background process (its pid in devcluster.PIDFile, its log in
// dir/router.log) unless one already runs, and waits until it listens. It
// returns the router's address.
func (a *app) startDevRouter(ctx context.Context, dir string) (string, error) {
	cfg, _, err := loadConfig(filepath.Join(dir, devcluster.ConfigFile))
	if err != nil {
		return "", err
	}
	addr := cfg.Router.Listen
	if _, running := devRouterRunning(dir); running {
		return addr, nil
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	logPath := filepath.Join(dir, "router.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	fi, err := logf.Stat()
	if err != nil {
		return "", err
	}
	logStart := fi.Size()
	cmd := exec.Command(self, "router", "--config", filepath.Join(dir, devcluster.ConfigFile), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command
	exited, err := startRouterChild(cmd)
	if err != nil {
		return "", fmt.Errorf("start router: %w", err)
	}
	// dev down finds the router without this file too (devcluster.Routers).
	if err := os.WriteFile(devcluster.PIDFile(dir), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return "", err
	}
	// An address that answers may belong to another program, and the router
	// listens for clients before the steps that can still make it exit
	// (catalog, map, metrics listener). So wait for the lines it prints once
	// it listens on both (newRouterCmd), in this run's part of its log.
	want := []string{"router listening on "}
	if cfg.Router.MetricsListen != "" {
		want = append(want, "metrics on http://")
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if logHas(logPath, logStart, want) {
			return addr, nil
		}
		select {
		case err := <-exited:
			return "", routerExited(err, logPath)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("router did not listen on %s within 15s; see %s", addr, logPath)
}

// devRouterRunning reports whether the local cluster's router in dir runs,
// and the address its config gives it.
func devRouterRunning(dir string) (string, bool) {
	cfg, _, err := loadConfig(filepath.Join(dir, devcluster.ConfigFile))
	if err != nil {
		return "", false
	}
	return cfg.Router.Listen, devcluster.RouterRunning(dir)
}

// tieRouterChildren, set by the test binary's TestMain (cli_test.go), makes
// startRouterChild tie the router to its parent. A variable rather than
// testing.Testing(), which would link package testing (~100 KB) into the
// binary.
var tieRouterChildren bool

// startRouterChild starts the dev router cmd and returns a channel that
// receives its exit. `dev up`'s router outlives the command on purpose (dev
// down stops it); one started by a test binary (which runs as pgtenant, see
// cli_test.go) dies with the binary, even a SIGKILLed one.
func startRouterChild(cmd *exec.Cmd) (<-chan error, error) {
	if tieRouterChildren {
		return proclife.Start(cmd, syscall.SIGKILL)
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	return exited, nil
}

// logHas reports whether the file at path, from byte offset on, holds every
// string in want.
func logHas(path string, offset int64, want []string) bool {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return false
	}
	for _, w := range want {
		if !strings.Contains(string(b[offset:]), w) {
			return false
		}
	}
	return true
}

// routerExited explains a dev router that exited at start, with the last
// line of its log.
func routerExited(err error, logPath string) error {
	last := ""
	if b, rerr := os.ReadFile(logPath); rerr == nil {
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		last = strings.TrimSpace(lines[len(lines)-1])
	}
	msg := fmt.Sprintf("the router exited at start (%v): %s\nsee %s", err, last, logPath)
	if strings.Contains(last, "address already in use") {
		msg += "\nanother program took its port: run `pgtenant dev up` again, which picks free ports"
	}
	return errors.New(msg)
}

// nextSteps are the commands to try after a local cluster in dir started,
// naming dir when it is not the default .pgtenant (whose config file later
// commands find by themselves).
func nextSteps(dir string, cmds ...string) []string {
	var out []string
	def, _ := filepath.Abs(".pgtenant")
	downDir := ""
	if abs, _ := filepath.Abs(dir); abs != def {
		out = append(out, "export PGTENANT_CONFIG="+shellQuote(filepath.Join(abs, devcluster.ConfigFile)))
		downDir = " --dir " + shellQuote(dir)
	}
	out = append(out, cmds...)
	return append(out, "pgtenant dev down"+downDir)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// routerURL is a postgres:// URL (for DATABASE_URL) of the router at addr.
func routerURL(addr string) string {
	return "postgres://postgres@" + addr + "/app?sslmode=disable"
}

// psqlLine is a psql command that connects through the router as tenant.
func psqlLine(addr, tenant string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("PGOPTIONS='-c pgtenant.tenant=%s' psql \"host=%s port=%s user=postgres dbname=app\"",
		strings.ReplaceAll(tenant, "'", `'\''`), host, port)
}
