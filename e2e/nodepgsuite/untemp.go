package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// untempMode runs the test files in transaction mode with their temporary
// tables made regular ones (see untempCopy).
const untempMode = "transaction-untemp"

// createTemp matches the CREATE TEMP TABLE spellings of node-postgres's tests.
var createTemp = regexp.MustCompile(`(?i)create\s+temp(orary)?\s+table`)

// untempCopy makes dst a packages/pg whose lib and node_modules are pgDir's
// and whose test files are pgDir's with CREATE TEMP TABLE rewritten to
// CREATE TABLE, and returns it.
func untempCopy(pgDir, dst string) (string, error) {
	pg := filepath.Join(dst, "pg")
	if err := os.MkdirAll(pg, 0o755); err != nil {
		return "", err
	}
	for _, name := range []string{"lib", "node_modules"} {
		if err := os.Symlink(filepath.Join(pgDir, name), filepath.Join(pg, name)); err != nil && !os.IsExist(err) {
			return "", fmt.Errorf("untemp copy: %w", err)
		}
	}
	src := filepath.Join(pgDir, "test")
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(pg, "test", rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".js") {
			b = createTemp.ReplaceAll(b, []byte("CREATE TABLE"))
		}
		return os.WriteFile(to, b, 0o644)
	})
	if err != nil {
		return "", fmt.Errorf("untemp copy: %w", err)
	}
	return pg, nil
}
