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
		at := time.Since(start).Round(time.Millisecond)
		switch stage {
		case "read":
			fmt.Fprintf(a.stderr, "%s: read %d ids\n", at, n)
		case "copied":
			fmt.Fprintf(a.stderr, "%s: copied %d ids\n", at, n)
		case "check":
			fmt.Fprintf(a.stderr, "%s: looking for repeated ids\n", at)
		case "registered":
			fmt.Fprintf(a.stderr, "%s: looking for ids already registered\n", at)
		case "insert":
			fmt.Fprintf(a.stderr, "%s: registering %d tenants\n", at, n)
		case "commit":
			fmt.Fprintf(a.stderr, "%s: committing\n", at)
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
