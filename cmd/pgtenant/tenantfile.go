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
			fmt.Fprintf(a.stderr, "%s: read %s\n", at, plural(n, "id"))
		case "copied":
			fmt.Fprintf(a.stderr, "%s: copied %s\n", at, plural(n, "id"))
		case "check":
			fmt.Fprintf(a.stderr, "%s: looking for repeated ids\n", at)
		case "registered":
			fmt.Fprintf(a.stderr, "%s: looking for ids already registered\n", at)
		case "insert":
			fmt.Fprintf(a.stderr, "%s: registering %s\n", at, plural(n, "tenant"))
		case "commit":
			fmt.Fprintf(a.stderr, "%s: committing\n", at)
		}
	}
	res, err := c.AddTenantFile(ctx, r, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "%s added from %s (%s read", plural(res.Added, "tenant"), path, plural(res.Read, "id"))
	if res.Existing > 0 {
		fmt.Fprintf(a.stdout, ", %d already registered and left as they were", res.Existing)
	}
	fmt.Fprintf(a.stdout, ") in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}
