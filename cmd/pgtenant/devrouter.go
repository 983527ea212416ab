package main

import (
	"context"
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
	if b, err := os.ReadFile(devcluster.PIDFile(dir)); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			if p, err := os.FindProcess(pid); err == nil && p.Signal(syscall.Signal(0)) == nil {
				return addr, nil
			}
		}
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find own executable: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, "router.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	defer logf.Close()
	cmd := exec.Command(self, "router", "--config", filepath.Join(dir, devcluster.ConfigFile), "--log-level", "info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives this command
	if err := cmd.Start(); err != nil {
		return "", fmt.Errorf("start router: %w", err)
	}
	if err := os.WriteFile(devcluster.PIDFile(dir), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return addr, nil
		}
		select {
		case err := <-exited:
			return "", fmt.Errorf("router exited (%v); see %s", err, filepath.Join(dir, "router.log"))
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return "", fmt.Errorf("router did not listen on %s within 15s; see %s", addr, filepath.Join(dir, "router.log"))
}

// psqlLine is a psql command that connects through the router as tenant.
func psqlLine(addr, tenant string) string {
	host, port, _ := net.SplitHostPort(addr)
	return fmt.Sprintf("PGOPTIONS='-c pgtenant.tenant=%s' psql \"host=%s port=%s user=postgres dbname=app\"",
		strings.ReplaceAll(tenant, "'", `'\''`), host, port)
}
