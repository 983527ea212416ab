package suiterun

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// Main runs a runner's run with its arguments and a context that SIGINT
// and SIGTERM end; an error is printed as "name: error" and exits 1.
func Main(name string, run func(ctx context.Context, args []string, out io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		stop()
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}

// Command is exec.CommandContext with dir, extra environment, and the
// output going to stderr.
func Command(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	return c
}

// Modes splits a -modes flag's comma-separated value and checks that each
// mode is one of known.
func Modes(value string, known ...string) ([]string, error) {
	modes := strings.Split(value, ",")
	for _, m := range modes {
		if !slices.Contains(known, m) {
			return nil, fmt.Errorf("-modes: unknown mode %q (known: %s)", m, strings.Join(known, ", "))
		}
	}
	return modes, nil
}

// WorkDir returns the directory a run works in: dir, made if need be, or
// when dir is "" a new temporary one named prefix*, which the returned
// cleanup removes unless keep (a given dir is always kept). A temporary one
// not kept is pgtenant-prefix* and marked as this process's
// (pgtest.TempDir): if the run is killed, the next test binary's start
// stops its servers and removes it. The directory is made enterable by
// every user: localpg runs the servers as the postgres user when run as
// root.
func WorkDir(dir, prefix string, keep bool) (path string, cleanup func(), err error) {
	cleanup = func() {}
	switch {
	case dir == "" && keep:
		if dir, err = os.MkdirTemp("", prefix); err != nil {
			return "", nil, fmt.Errorf("make a work directory: %w", err)
		}
	case dir == "":
		if dir, err = pgtest.TempDir(strings.TrimSuffix(prefix, "-")); err != nil {
			return "", nil, fmt.Errorf("make a work directory: %w", err)
		}
		cleanup = func() { os.RemoveAll(dir) }
	default:
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", nil, fmt.Errorf("make the work directory: %w", err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		cleanup()
		return "", nil, fmt.Errorf("make the work directory enterable: %w", err)
	}
	return dir, cleanup, nil
}

// BuildPgtenant builds cmd/pgtenant (the runner is run from the
// repository's root) into dir and returns the binary's path.
func BuildPgtenant(ctx context.Context, dir string) (string, error) {
	bin := filepath.Join(dir, "pgtenant")
	if err := Command(ctx, "", nil, "go", "build", "-o", bin, "./cmd/pgtenant").Run(); err != nil {
		return "", fmt.Errorf("build pgtenant: %w", err)
	}
	return bin, nil
}
