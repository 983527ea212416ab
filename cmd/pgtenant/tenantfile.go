package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// addTenantFile runs `tenant add --file`: progress on stderr, the counts on
// stdout.
func (a *app) addTenantFile(ctx context.Context, c *catalog.Catalog, stdin io.Reader, path string, opts catalog.TenantFileOptions) error {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("tenant file: %w", err)
		}
		defer f.Close()
		r = f
	}
	start := time.Now()
	opts.Progress = func(stage string, n int64) {
		switch stage {
		case "read":
			fmt.Fprintf(a.stderr, "read %d ids (%s)\n", n, time.Since(start).Round(time.Millisecond))
		case "check":
			fmt.Fprintf(a.stderr, "read %d ids; checking for repeated and registered ids (%s)\n", n, time.Since(start).Round(time.Millisecond))
		case "insert":
			fmt.Fprintf(a.stderr, "registering %d tenants (%s)\n", n, time.Since(start).Round(time.Millisecond))
		}
	}
	res, err := c.AddTenantFile(ctx, r, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%d tenants added from %s (%d ids read", res.Added, path, res.Read)
	if res.Existing > 0 {
		fmt.Fprintf(a.stdout, ", %d already registered and left as they were", res.Existing)
	}
	fmt.Fprintf(a.stdout, ") in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}
