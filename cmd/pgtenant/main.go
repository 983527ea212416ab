// Command pgtenant is tenant sharding for PostgreSQL: a wire-protocol router,
// a control plane over a catalog database, and a local cluster. This package
// only wires flags and config to the internal packages and maps errors to
// exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

// Exit codes.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := runSignals(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, sigs)
	os.Exit(code)
}

// usageError marks errors in how the command was called.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	return runSignals(ctx, args, stdin, stdout, stderr, nil)
}

// runSignals runs the command with the signals received on sigs: SIGINT,
// SIGTERM and SIGHUP end a command, except the router, which drains on
// SIGINT/SIGTERM and reloads its config on SIGHUP (see routerSignals).
func runSignals(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a := &app{stdout: stdout, stderr: stderr}
	if sigs != nil {
		go a.dispatchSignals(ctx, sigs, cancel)
	}
	root := newRootCmd(a)
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ue usageError
	usage := errors.As(err, &ue) || isCobraUsage(err)
	a.reportFailure(stderr, err, usage)
	if usage {
		return exitUsage
	}
	return exitError
}
