//go:build linux || darwin || freebsd

package nodestats

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// diskSpace is statfs(2) of dir, when dir is a data directory of the
// server's major version on this machine.
func diskSpace(dir, serverVersion string) (free, total int64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return 0, 0, fmt.Errorf("data directory %s is not readable here", dir)
	}
	if major := strings.TrimSpace(string(b)); !strings.HasPrefix(serverVersion, major+".") && serverVersion != major {
		return 0, 0, fmt.Errorf("data directory %s here is of PostgreSQL %s, not the server's", dir, major)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}
